#!/usr/bin/env bash
# The whole test suite, heavier marks included (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "test: .venv/ missing; run scripts/setup.sh first" >&2; exit 1; }
export DS_ACCELERATOR=cpu
exec .venv/bin/python -m pytest -m "" "$@"
