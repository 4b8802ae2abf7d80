"""The conversion as a launched stage, like the training stages (pipeline.launch.stage): a
submitit LocalExecutor process with `launch.launcher: local`, or a SLURM job of the profile's
`conversion` kind with `launcher: slurm`, whose cpus_per_task set the decoding processes.

    data/ffcv/                              betons + manifest.json (DVC out)
    metrics/convert_imagenet.json           seconds, images/s, images per split (DVC metrics)
    outputs/checkpoints/convert_imagenet/   the betons being written, with their checkpoints: a
                                            killed conversion resumes from them (kept outside the
                                            DVC out, which `dvc repro` deletes before it runs)
    outputs/submitit/convert_imagenet/      submitit's job folder (logs)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConvertParams, Params
from pipeline.data.sources import Sources

STAGE = "convert_imagenet"


@dataclass
class ConvertSpec:
    params: Params  # how to launch (params.launch); what to convert is `cfg`
    cfg: ConvertParams  # data.convert with the command line's overrides
    sources: Sources  # as source.json names them (relative to repo_root): the manifest records them as given
    repo_root: Path
    out_dir: Path
    ckpt_dir: Path  # the work folder of pipeline.data.convert
    metrics_file: Path | None = None
    plots_file: Path | None = None  # none: the SLURM launcher collects the out folder and metrics only
    launcher_pid: int | None = None
    stage: str = STAGE

    def work(self) -> dict:
        """The job (what the launchers call)."""
        return convert_worker(self)


def make_convert_spec(params: Params, cfg: ConvertParams, sources: Sources, out_dir: str | Path,
                      repo_root: str | Path = ".", metrics_file: str | Path | None = None,
                      work: str | Path | None = None) -> ConvertSpec:
    root = Path(repo_root).resolve()
    launch = params.launch.model_copy(update={"tasks": 1})  # one process, whatever training's rank count
    return ConvertSpec(params=params.model_copy(update={"launch": launch}), cfg=cfg, sources=sources, repo_root=root,
                       out_dir=root / out_dir, ckpt_dir=root / (work or Path("outputs") / "checkpoints" / STAGE),
                       metrics_file=root / metrics_file if metrics_file else None, launcher_pid=os.getpid())


def job_workers(configured: int) -> int:
    """Decoding processes: inside a SLURM job the CPUs its allocation gives the task (the
    profile's cpus_per_task), elsewhere data.convert.num_workers."""
    from pipeline.launch.local import in_slurm_job

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(cpus) if cpus and in_slurm_job() else configured


def convert_worker(spec: ConvertSpec) -> dict:
    """Convert, resuming the checkpoints in spec.ckpt_dir; write and return the stage's metrics,
    or {"error": message} when the folders cannot be converted as they are (the stage prints it
    as its one error line)."""
    # here, not at the top: importing FFCV compiles numba code (seconds), which the launcher of the
    # job need not pay
    from pipeline.data.convert import ConversionError, convert, write_json_atomic
    from pipeline.data.scan import DataLayoutError
    from pipeline.launch.local import shared_lock, watch_launcher
    from pipeline.launch.stage import workers_lock_path

    with shared_lock(workers_lock_path(spec)):
        watch_launcher(spec.launcher_pid)
        os.chdir(spec.repo_root)  # the sources are relative to it
        workers = job_workers(spec.cfg.num_workers)
        print(f"[convert] {spec.stage}: {workers} decoding process(es), work folder {spec.ckpt_dir}", flush=True)
        try:
            done = convert(spec.sources, spec.out_dir, spec.cfg, work=spec.ckpt_dir, workers=workers,
                           log=lambda m: print(m, flush=True))
        except (DataLayoutError, ConversionError) as err:
            return {"error": str(err)}
        metrics = done.metrics()
        if spec.metrics_file is not None:
            spec.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(spec.metrics_file, metrics)
        return metrics
