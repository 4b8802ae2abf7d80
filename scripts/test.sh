#!/usr/bin/env bash
# The test suite, heavier marks included (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "test: .venv/ missing; run scripts/setup.sh first" >&2; exit 1; }
export DS_ACCELERATOR=cpu
# Tests and the commands they start (dvc, the stages' `python -m ...`) use the project venv.
export PATH="$PWD/.venv/bin:$PATH"
# SLURM-marked tests need the one-node SLURM: bring it up (failing loudly if it cannot start), and
# stop it afterwards only if this run started it (a cluster someone already had up stays up).
if bash slurm/local/up.sh --is-up; then slurm_owned=0; else
  bash slurm/local/up.sh || { echo "test: ERROR: the local SLURM (slurm/local/up.sh) did not start" >&2; exit 1; }
  slurm_owned=1
fi
[ "$slurm_owned" = 0 ] || trap 'bash slurm/local/down.sh' EXIT
# Every mark, the README's main job included (~6 min with native bf16; skipped on a CPU without it);
# a later -m given here (e.g. `-m mainjob`) replaces this one.
.venv/bin/python -m pytest -m "" "$@"
