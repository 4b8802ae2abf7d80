"""Stages as SLURM jobs through submitit: submit, or re-attach to the job already submitted for
the same stage and inputs, wait, and put its outputs where dvc.yaml expects them.

The job runs the very worker the local launcher runs (the spec's own `work()`: a training stage's
`pipeline.train.run.train_worker`, a transfer stage's `pipeline.transfer.run.transfer_worker`, the
conversion's `pipeline.data.convert_job.convert_worker`, one task resuming its own checkpoints): rank,
world size and rendezvous come from submitit's JobEnvironment in both (`distributed_env`), one
task per GPU (NCCL) or `tasks_per_node` CPU tasks (gloo), on 1..N nodes. The recipe's global
batch and its learning-rate scaling do not depend on the node count (`batch_layout` turns more
ranks into less gradient accumulation).

Re-attaching: each submission is recorded in outputs/slurm/jobs/<stage>.json with the stage's
key (pipeline.launch.stagekey: stage name + hash of its params and deps). A later `dvc repro` (or
the same one after the login shell died) finds a record with the same key whose job is queued,
running or finished, and waits for that job instead of submitting another.

Staged outputs: `dvc repro` deletes a stage's outs before it runs the stage's command, so a job
that finished earlier (submitted by `python -m pipeline.launch`) writes to
outputs/slurm/staged/<stage>/<key>/ and the attaching stage links (or copies) the files into place.

Preemption and time limits: the job callable is a submitit `Checkpointable`. On SLURM's warning
signal (USR2, `signal_delay_s` before the limit) or preemption, submitit requeues the job with the
same call; `scontrol requeue` kills and requeues it likewise. Either way the rerun resumes from the
newest complete checkpoint (pipeline.train.checkpoint, every `checkpoint_every_steps` and at every
epoch end), so the work since that checkpoint is redone, and the end result is the same.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from . import cluster
from .local import follow
from pipeline.slurm_profiles import load_profile, stage_kind

# job states after which no result is coming
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED_FINAL"}


class SlurmJobError(RuntimeError):
    """The stage's SLURM job failed; the message carries its state and the tail of its stderr."""


class StageJob(Checkpointable):
    """The callable submitit runs per task: the stage spec's own worker (so this package imports no
    stage code); requeue-safe (see the module docstring)."""

    def __call__(self, spec):
        return spec.work()


class _QueueWatcher(submitit.slurm.slurm.SlurmInfoWatcher):
    """submitit's state watcher, reading squeue/scontrol instead of sacct (see cluster.py)."""

    def update(self) -> None:
        for job_id in self._registered - self._finished:
            state = cluster.job_state(job_id.split("_")[0])
            self._info_dict[job_id] = {"JobID": job_id, "State": "UNKNOWN" if state == cluster.GONE else state}
            if state not in cluster.ACTIVE and state != cluster.GONE:
                self._finished.add(job_id)
        self._last_status_check = time.time()


class QueueJob(submitit.SlurmJob):
    watcher = _QueueWatcher(delay_s=10)


class QueueExecutor(submitit.SlurmExecutor):
    job_class = QueueJob


def jobs_dir(repo_root: Path) -> Path:
    return Path(repo_root) / "outputs" / "slurm" / "jobs"


def staged_dir(repo_root: Path, stage: str, key: str) -> Path:
    """Where the job of (stage, key) writes its outputs (out/, metrics.json, plots.json)."""
    return Path(repo_root) / "outputs" / "slurm" / "staged" / stage / key


def staged_spec(spec, key: str):
    """The spec the SLURM job runs: outputs staged under the key, ranks from the profile, no
    launcher pid to watch (the job must outlive the shell that submitted it)."""
    req = load_profile(spec.params.launch.profile).request(stage_kind(spec.stage))
    launch = spec.params.launch.model_copy(update={"tasks": req.world_size})
    params = spec.params.model_copy(update={"launch": launch})
    staged = staged_dir(spec.repo_root, spec.stage, key)
    return replace(spec, params=params, launcher_pid=None, out_dir=staged / "out",
                   metrics_file=staged / "metrics.json",
                   plots_file=staged / "plots.json" if spec.plots_file is not None else None)


def profile_ranks(spec) -> dict:
    """The ranks the SLURM profile gives the spec's stage kind: nodes, tasks and GPUs per node."""
    req = load_profile(spec.params.launch.profile).request(stage_kind(spec.stage))
    return {"nodes": req.nodes, "tasks_per_node": req.ntasks_per_node, "gpus_per_node": req.gpus_per_node}


def _say(line: str) -> None:
    print(line, flush=True)


def preflight(spec, echo=_say) -> None:
    """The spec's own plan on the profile's ranks, printed (a spec without `plan` has none): raises
    a SubmissionError naming the params key when the layout cannot work, before anything is queued."""
    if hasattr(spec, "plan"):
        for line in spec.plan(**profile_ranks(spec)).lines():
            echo(f"[slurm] {line}")


def executor_for(spec, folder: Path, dependency: list[str] | None = None) -> QueueExecutor:
    """A submitit executor for `spec`'s stage kind, validated against the live cluster first."""
    profile = load_profile(spec.params.launch.profile)
    kind = stage_kind(spec.stage)
    req = profile.request(kind)
    cluster.check_request(req, f"slurm/profiles/{profile.name}.yaml: kinds.{kind}")
    ex = QueueExecutor(folder=folder, max_num_timeout=10)
    extra = dict(req.extra_sbatch)
    if dependency:
        extra["dependency"] = "afterok:" + ":".join(dependency)
        extra["kill-on-invalid-dep"] = "yes"  # an upstream failure cancels this job instead of leaving it pending
    ex.update_parameters(job_name=spec.stage, partition=req.partition, nodes=req.nodes,
                         ntasks_per_node=req.ntasks_per_node, cpus_per_task=req.cpus_per_task, mem=req.mem,
                         time=req.time_min, setup=list(req.setup), additional_parameters=extra, signal_delay_s=60,
                         **({"gpus_per_node": req.gpus_per_node} if req.gpus_per_node else {}),
                         **({"account": req.account} if req.account else {}),
                         **({"qos": req.qos} if req.qos else {}),
                         **({"constraint": req.constraint} if req.constraint else {}))
    return ex


@contextmanager
def _locked(path: Path):
    """One submitter per stage at a time (two `dvc repro`/launch processes never both submit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_record(repo_root: Path, stage: str) -> dict | None:
    path = jobs_dir(repo_root) / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(repo_root: Path, record: dict) -> None:
    path = jobs_dir(repo_root) / f"{record['stage']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _attachable(rec: dict) -> bool:
    """Whether the recorded job is queued, running, or finished with a result."""
    state = cluster.job_state(rec["job_id"])
    return state in cluster.ACTIVE or state == "COMPLETED" or Path(rec["result"]).exists()


def submit(spec, key: str, dependency: list[str] | None = None, planned: bool = False) -> dict:
    """Submit the stage's job (or return the live one with the same key); record it. Unless
    `planned` (the launch command checks every stage first), the preflight runs before submitting."""
    root = Path(spec.repo_root)
    with _locked(jobs_dir(root) / spec.stage):
        old = read_record(root, spec.stage)
        if old and old.get("key") == key:
            if _attachable(old):
                return {**old, "attached": True}
        elif old and cluster.job_state(old["job_id"]) in cluster.ACTIVE:
            print(f"[slurm] note: job {old['job_id']} still runs {spec.stage} for other params or code "
                  f"(key {old['key'][:12]}); `scancel {old['job_id']}` if it is no longer wanted", flush=True)
        if not planned:
            preflight(spec)
        job_spec = staged_spec(spec, key)
        shutil.rmtree(job_spec.out_dir.parent, ignore_errors=True)  # no leftovers of an earlier try
        folder = root / "outputs" / "submitit" / spec.stage
        job = executor_for(spec, folder, dependency).submit(StageJob(), job_spec)
        rec = {"stage": spec.stage, "key": key, "job_id": job.job_id, "folder": str(folder),
               "stderr": str(job.paths.stderr), "result": str(job.paths.result_pickle),
               "staged": str(job_spec.out_dir.parent), "submitted_at": time.time()}
        _write_record(root, rec)
        return {**rec, "attached": False}


def _tail(path: str, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no stderr file {path})"


def wait(rec: dict, poll_s: float = 3.0, echo=sys.stdout) -> dict:
    """Wait for the recorded job, echoing its state changes and rank 0's output (the progress
    lines); return rank 0's result, or raise SlurmJobError with its stderr tail."""
    job = QueueJob(folder=rec["folder"], job_id=rec["job_id"])
    result = Path(rec["result"])
    out = Path(rec["folder"]) / f"{rec['job_id']}_0_log.out"
    last, pos = None, 0
    while True:
        state = cluster.job_state(rec["job_id"])
        if state != last:
            print(f"[slurm] job {rec['job_id']} ({rec['stage']}): {state}", file=echo, flush=True)
            last = state
        pos = follow(out, pos, echo)
        if result.exists() or state not in cluster.ACTIVE:
            break
        time.sleep(poll_s)
    follow(out, pos, echo)
    for _ in range(20):  # the result file can lag the state on a shared file system
        if result.exists():
            break
        time.sleep(0.5)
    if not result.exists():
        raise SlurmJobError(f"{rec['stage']}: SLURM job {rec['job_id']} ended {state} without a result "
                            f"({cluster.job_reason(rec['job_id'])}); tail of {rec['stderr']}:\n{_tail(rec['stderr'])}")
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - submitit re-raises the task's failure
        raise SlurmJobError(f"{rec['stage']}: SLURM job {rec['job_id']} failed: {str(err)[-2000:]}\n"
                            f"tail of {rec['stderr']}:\n{_tail(rec['stderr'])}") from None


def _link_or_copy(src: str, dst: str) -> None:
    # a second name for the file (a conversion's betons are hundreds of GB); a copy across file systems
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def collect(spec, rec: dict) -> None:
    """Put the job's staged outputs at the paths dvc.yaml declares (hard links where possible;
    the staged files stay, for a later `dvc repro` that attaches to the same finished job)."""
    staged = Path(rec["staged"])
    moves = [(staged / "out", Path(spec.out_dir)), (staged / "metrics.json", Path(spec.metrics_file))]
    if spec.plots_file is not None:
        moves.append((staged / "plots.json", Path(spec.plots_file)))
    for src, dst in moves:
        if not src.exists():
            raise SlurmJobError(f"{spec.stage}: job {rec['job_id']} finished but {src} is missing")
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir():
            shutil.rmtree(dst)
        dst.unlink(missing_ok=True)
        shutil.copytree(src, dst, copy_function=_link_or_copy) if src.is_dir() else _link_or_copy(src, dst)


def run_stage_slurm(spec) -> dict:
    """What `dvc repro <train stage>` does with launcher slurm: attach or submit, wait, collect."""
    from .stagekey import stage_key

    key = stage_key(Path(spec.repo_root), spec.stage)
    rec = submit(spec, key)
    verb = "attached to" if rec["attached"] else "submitted"
    print(f"[slurm] {verb} job {rec['job_id']} for {spec.stage} (key {key[:12]}); squeue -j {rec['job_id']}",
          flush=True)
    try:
        metrics = wait(rec)
    except SlurmJobError:
        # reported once; the next `dvc repro` submits afresh rather than re-reporting a dead job
        (jobs_dir(Path(spec.repo_root)) / f"{spec.stage}.json").unlink(missing_ok=True)
        raise
    collect(spec, rec)
    return metrics
