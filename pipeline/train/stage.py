"""A training stage from the command line's point of view: params.yaml and a run key in, the
run launched through submitit, outputs at the paths dvc.yaml declares.

    outputs/<stage>/model.pt          final student + EMA weights (DVC out)
    metrics/<stage>.json              final metrics (DVC metrics)
    plots/<stage>.json                one row per epoch (DVC plots)
    outputs/checkpoints/<stage>/      DeepSpeed checkpoints while the run is unfinished
    outputs/submitit/<stage>/         submitit's job folder (per-rank logs)
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import Params

from .run import RunSpec


class StageError(RuntimeError):
    """A stage cannot start: missing inputs, or another run of it is still going."""


def make_spec(params: Params, kind: str, key: str, repo_root: str | Path = ".", init_weights: Path | None = None,
              **extra) -> RunSpec:
    """The run of stage `<kind>_<key>`. A fine-tuning run starts from its 448 stage's model.pt, which
    must exist, unless `init_weights` names where an upstream job will have written it (a chain
    submitted at once by `python -m pipeline.launch`)."""
    if kind not in ("train", "finetune"):
        raise ValueError(f"kind must be 'train' or 'finetune', got {kind!r}")
    root = Path(repo_root).resolve()
    section = params.train if kind == "train" else params.finetune
    run = section.run(key)  # KeyError naming the known runs
    stage = f"{kind}_{key}"
    init = None
    if kind == "finetune" and init_weights is not None:
        init = Path(init_weights)
    elif kind == "finetune":
        init = root / "outputs" / f"train_{run.init_from}" / "model.pt"
        if not init.is_file():
            raise StageError(f"{init}: not found; fine-tuning {stage} starts from train_{run.init_from}'s weights "
                             f"(run `dvc repro train_{run.init_from}` first)")
    from pipeline.tracking.mlflow_run import git_commit

    spec = RunSpec(kind=kind, key=key, params=params, repo_root=root, ffcv_dir=root / "data" / "ffcv",
                   out_dir=root / "outputs" / stage, ckpt_dir=root / "outputs" / "checkpoints" / stage,
                   metrics_file=root / "metrics" / f"{stage}.json", plots_file=root / "plots" / f"{stage}.json",
                   init_weights=init, launcher_pid=os.getpid(), git_commit=git_commit(root))
    for k, v in extra.items():
        setattr(spec, k, v)
    return spec


def workers_lock_path(spec: RunSpec) -> Path:
    return spec.ckpt_dir.parent / f"{spec.stage}.workers.lock"


def _flock_wait(f, path: Path, spec: RunSpec, wait_s: float) -> None:
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
def stage_lock(spec: RunSpec, wait_s: float = 30.0):
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
    """Launch the run (params.launch), wait, return the final metrics. `spec` is a training run's
    RunSpec or a transfer run's TransferSpec: anything with stage, params, repo_root, ckpt_dir and
    a `work()` that is one rank's body."""
    from pipeline.launch.local import run_local, run_spec

    launch = spec.params.launch
    if launch.launcher == "slurm":  # a SLURM job outlives this process; its job record is the lock
        from pipeline.launch.slurm import run_stage_slurm

        return run_stage_slurm(spec)
    with stage_lock(spec):
        return run_local(run_spec, spec, launch=launch, folder=spec.repo_root / "outputs" / "submitit" / spec.stage,
                         name=spec.stage)
