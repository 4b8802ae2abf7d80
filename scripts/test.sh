#!/usr/bin/env bash
# The test suite, heavier marks included (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "test: .venv/ missing; run scripts/setup.sh first" >&2; exit 1; }
export DS_ACCELERATOR=cpu
# Tests and the commands they start (dvc, the stages' `python -m ...`) use the project venv.
export PATH="$PWD/.venv/bin:$PATH"
# SLURM-marked tests need the one-node SLURM, and the multi-node test the two-node one: bring each
# up (failing loudly if it cannot start), and stop it afterwards only if this run started it (a
# cluster someone already had up stays up); the two-node one first, as it started second.
downs=""
trap 'eval "$downs"' EXIT
if ! bash slurm/local/up.sh --is-up; then
  downs="bash slurm/local/down.sh"
  bash slurm/local/up.sh || { echo "test: ERROR: the local SLURM (slurm/local/up.sh) did not start" >&2; exit 1; }
fi
# Exit 3: this machine refused a network or UTS namespace or the veth pair (up.sh printed which and
# kept it in its state directory); the multi-node test then runs on one node and quotes the refusal.
if ! bash slurm/local/up.sh --is-up --nodes 2; then
  downs="bash slurm/local/down.sh --nodes 2 || true; $downs"
  rc=0; bash slurm/local/up.sh --nodes 2 || rc=$?
  case "$rc" in
    0) ;;
    3) echo "test: no two-node SLURM on this machine (refused, above): the multi-node test runs on one node" >&2 ;;
    *) echo "test: ERROR: the two-node SLURM (slurm/local/up.sh --nodes 2) did not start" >&2; exit 1 ;;
  esac
fi
# Every mark, the README's main job included (~6 min with native bf16; skipped on a CPU without it);
# a later -m given here (e.g. `-m mainjob`) replaces this one.
.venv/bin/python -m pytest -m "" "$@"
