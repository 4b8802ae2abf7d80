"""Running a stage's spec through the launcher params.launch names, one live run per stage.

A spec is a training run's `pipeline.train.run.RunSpec` or a transfer run's
`pipeline.transfer.run.TransferSpec`: anything with `stage`, `params`, `repo_root`, `ckpt_dir` and a
`work()` that is one rank's body. This module imports no stage code (the job calls `spec.work()`).
"""
from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path


class StageError(RuntimeError):
    """A stage cannot start: missing inputs, or another run of it is still going."""


def workers_lock_path(spec) -> Path:
    return spec.ckpt_dir.parent / f"{spec.stage}.workers.lock"


def _flock_wait(f, path: Path, spec, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StageError(f"another run of {spec.stage} holds {path} (still running?); stop it first") from None
            time.sleep(0.5)


@contextmanager
def stage_lock(spec, wait_s: float = 30.0):
    """One live run per stage. The launcher holds `<stage>.lock`; every worker holds
    `<stage>.workers.lock` shared for its lifetime. A killed launcher's workers stop within
    seconds (they watch its pid), so a rerun waits briefly for both locks instead of training
    beside a dying run and its half-written checkpoint."""
    path = spec.ckpt_dir.parent / f"{spec.stage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        _flock_wait(f, path, spec, wait_s)
        try:
            workers = workers_lock_path(spec)
            with open(workers, "a+") as w:
                _flock_wait(w, workers, spec, wait_s)  # the previous run's workers are gone
                fcntl.flock(w, fcntl.LOCK_UN)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_stage(spec) -> dict:
    """Launch the run (params.launch), wait, return the final metrics."""
    from .local import run_local, run_spec

    launch = spec.params.launch
    if launch.launcher == "slurm":  # a SLURM job outlives this process; its job record is the lock
        from .slurm import run_stage_slurm

        return run_stage_slurm(spec)
    with stage_lock(spec):
        return run_local(run_spec, spec, launch=launch, folder=spec.repo_root / "outputs" / "submitit" / spec.stage,
                         name=spec.stage)
