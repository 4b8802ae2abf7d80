"""Run a function as N processes through submitit's LocalExecutor, and wire torch.distributed
from submitit's JobEnvironment inside them.

The same worker code runs under SLURM later: `distributed_env()` reads rank, world size and
rendezvous from `submitit.JobEnvironment` (via submitit.helpers.TorchDistributedEnvironment),
whichever executor started the process, and exports the env:// variables DeepSpeed reads.

Orphans: if the launching process dies (for instance `dvc repro` is killed), the workers must not
keep training and writing checkpoints behind the next run's back. Each worker watches the
launcher's pid and exits when it is gone (`watch_launcher`).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import submitit

from pipeline.config import LaunchParams


class LaunchError(RuntimeError):
    """A task of the job failed; the message carries the tail of its log."""


def distributed_env() -> dict:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the JobEnvironment; return them."""
    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return {"rank": env.rank, "world_size": env.world_size, "local_rank": env.local_rank,
            "local_world_size": env.local_world_size, "master": f"{env.master_addr}:{env.master_port}"}


def in_slurm_job() -> bool:
    """Whether this process is a task of a SLURM job started by submitit."""
    try:
        return submitit.JobEnvironment().cluster == "slurm"
    except RuntimeError:  # not inside a submitit job at all (tests calling a worker directly)
        return False


def share_cpu_threads(local_world_size: int) -> int:
    """Split this machine's cores between the local ranks (each rank otherwise takes them all)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def rank_device(env: dict):
    """This rank's device (`env` from distributed_env): its GPU by local rank where there are GPUs,
    else the CPU with its share of the cores."""
    import torch

    if not torch.cuda.is_available():
        share_cpu_threads(env["local_world_size"])
        return torch.device("cpu")
    device = torch.device("cuda", env["local_rank"])
    torch.cuda.set_device(device)
    return device


def watch_launcher(pid: int | None, interval_s: float = 1.0) -> None:
    """Exit this process soon after process `pid` (the launcher) disappears."""
    if not pid:
        return

    def _watch():
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"launcher (pid {pid}) is gone; stopping this worker", file=sys.stderr, flush=True)
                os._exit(3)
            except PermissionError:
                pass

    threading.Thread(target=_watch, name="watch-launcher", daemon=True).start()


def watch_parent(interval_s: float = 1.0) -> None:
    """Exit this process soon after its parent dies (it is then re-parented). A training stage
    run by `dvc repro` uses it: killing DVC must not leave a launcher (and its workers) behind."""
    parent = os.getppid()

    def _watch():
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                print(f"parent process {parent} is gone; stopping", file=sys.stderr, flush=True)
                os._exit(3)

    threading.Thread(target=_watch, name="watch-parent", daemon=True).start()


@contextmanager
def shared_lock(path: str | Path):
    """Held (shared) by every worker of a run for its lifetime; see pipeline.launch.stage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def follow(path: Path, pos: int, sink) -> int:
    """Copy the whole lines that `path` gained since byte `pos` to `sink`; return the new position.
    A file that shrank was rewritten (a requeued SLURM job reopens its log): start it over."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < pos:
                pos = 0
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return pos
    if data:
        # only whole lines, so that a line is never split between two polls
        cut = data.rfind(b"\n") + 1
        if cut:
            sink.write(data[:cut].decode(errors="replace"))
            sink.flush()
        return pos + cut
    return pos


_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _fresh_rendezvous():
    """LocalExecutor hands the tasks this process's environment: drop any rendezvous variables
    inherited from elsewhere (a job this one runs inside, a benchmark's own process group) and
    give the job a free port, which TorchDistributedEnvironment then exports."""
    saved = {k: os.environ.pop(k) for k in _RENDEZVOUS_VARS if k in os.environ}
    os.environ["MASTER_PORT"] = str(_free_port())
    try:
        yield
    finally:
        os.environ.pop("MASTER_PORT", None)
        os.environ.update(saved)


def _failed_task(tasks) -> tuple[int, str] | None:
    """(rank, traceback) of a task that already wrote an error result while others still run.
    A LocalJob's sub-jobs share the controller's state, so read the result files directly."""
    from submitit.core.utils import pickle_load

    if len(tasks) < 2:
        return None
    for rank, t in enumerate(tasks):
        path = t.paths.result_pickle
        if path.exists():
            try:
                outcome, payload = pickle_load(path)
            except Exception:  # noqa: BLE001 - still being written
                continue
            if outcome == "error":
                return rank, str(payload)
    return None


def _stop_job(job, grace_s: float = 5.0) -> None:
    """Cancel a LocalJob and see its processes gone. submitit's cancel is a SIGINT to the job's
    controller process, which a process started in the background of a non-interactive shell
    ignores (SIG_IGN is inherited), and a rank blocked inside a C++ rendezvous or collective never
    runs Python's handlers: so whatever of the job is still alive `grace_s` later is killed."""
    import psutil

    try:
        controller = psutil.Process(int(job.job_id))  # a LocalJob's id is its controller's pid
        procs = [controller, *controller.children(recursive=True)]
    except (psutil.Error, ValueError):
        procs = []
    job.cancel(check=False)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def run_spec(spec):
    """What each local task runs: the stage spec's own worker (a module-level function, so submitit
    pickles it by name)."""
    return spec.work()


def run_local(fn: Callable, *args, launch: LaunchParams, folder: str | Path, name: str, echo=sys.stdout):
    """Run fn(*args) as `launch.tasks` processes with LocalExecutor; echo rank 0's output while it
    runs; return rank 0's result, or raise LaunchError with the failing task's log tail."""
    if launch.launcher != "local":
        raise ValueError(f"launch.launcher {launch.launcher!r} is not handled by run_local")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(tasks_per_node=launch.tasks, nodes=1, timeout_min=launch.timeout_min,
                               gpus_per_node=0, name=name)
    with _fresh_rendezvous():
        job = executor.submit(fn, *args)
    tasks = [job.task(i) for i in range(launch.tasks)] if launch.tasks > 1 else [job]
    out_pos = err_pos = 0
    while not job.done():
        out_pos = follow(tasks[0].paths.stdout, out_pos, echo)
        err_pos = follow(tasks[0].paths.stderr, err_pos, sys.stderr)
        failed = _failed_task(tasks)
        if failed is not None:
            # one rank died: the others would wait in a collective until gloo's timeout
            _stop_job(job)
            rank, trace = failed
            raise LaunchError(f"{name}: rank {rank} failed, the other ranks were stopped:\n{trace}")
        time.sleep(0.5)
    follow(tasks[0].paths.stdout, out_pos, echo)
    follow(tasks[0].paths.stderr, err_pos, sys.stderr)
    try:
        results = job.results()
    except Exception as err:  # noqa: BLE001 - submitit re-raises the task's failure
        raise LaunchError(f"{name}: a training process failed:\n{err}") from None
    return results[0]
