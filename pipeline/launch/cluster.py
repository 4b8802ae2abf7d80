"""What the live SLURM says: partition limits (checked before submitting) and job state.

Job state never relies on `sacct`: a cluster without an accounting database (like the one of
slurm/local/up.sh) answers it with "Slurm accounting storage is disabled", and submitit then
reports every job as UNKNOWN forever (facebookincubator/submitit#1720). We ask `squeue` while the
job is queued or running, then `scontrol show job` (finished jobs stay there for MinJobAge), and
`sacct` only as a last resort where accounting exists.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from pipeline.slurm_profiles import StageRequest, mem_to_mb, time_to_minutes

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "PREEMPTED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
GONE = "GONE"  # in no queue, unknown to scontrol and sacct


class SubmissionError(RuntimeError):
    """The request does not fit the cluster, or sbatch refused it; the message names the field."""


class ClusterUnreachable(SubmissionError):
    """No SLURM client here, or the controller does not answer: what only the cluster knows is unchecked."""


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise ClusterUnreachable(f"{cmd[0]} not found: no SLURM client on this machine (slurm/local/up.sh "
                                 f"installs one)")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=check)
    except subprocess.CalledProcessError as err:
        raise ClusterUnreachable(f"`{' '.join(cmd)}` failed (exit {err.returncode}): "
                                 f"{(err.stderr or '').strip()[:300]}") from None
    except subprocess.TimeoutExpired:
        raise ClusterUnreachable(f"`{' '.join(cmd)}` did not answer within 60 s") from None


def _kv(text: str) -> dict[str, str]:
    """`scontrol show ... -o` output (Key=Value Key=Value ...) to a dict."""
    return dict(m.groups() for m in re.finditer(r"(\w+(?::\w+)?)=(\S*)", text))


def partitions() -> list[str]:
    out = _run(["sinfo", "-h", "-o", "%R"]).stdout
    return sorted({p.strip() for p in out.split() if p.strip()})


def gpus_of(gres: str) -> int:
    """GPU count in a sinfo %G string such as 'gpu:8', 'gpu:a100:4(S:0-1),shard:8' or '(null)'."""
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def check_request(req: StageRequest, where: str) -> None:
    """Raise SubmissionError naming `<where>.<field>` if `req` cannot run on this cluster's partition."""
    names = partitions()
    if req.partition not in names:
        raise SubmissionError(f"{where}.partition: partition {req.partition!r} does not exist on this cluster "
                              f"(sinfo lists {names}; {_which_cluster()})")
    part = _kv(_run(["scontrol", "show", "partition", req.partition, "-o"]).stdout)
    max_time = part.get("MaxTime", "UNLIMITED")
    if max_time not in ("UNLIMITED", "INFINITE") and req.time_min > time_to_minutes(max_time):
        raise SubmissionError(f"{where}.time: {req.time} is over partition {req.partition!r}'s limit {max_time}")
    total_nodes = int(part.get("TotalNodes", "0") or 0)
    if req.nodes > total_nodes:
        raise SubmissionError(f"{where}.nodes: {req.nodes} nodes requested, partition {req.partition!r} has "
                              f"{total_nodes}")
    # per node: the best node of the partition must hold one whole node's share of the request
    rows = _run(["sinfo", "-h", "-N", "-p", req.partition, "-o", "%N|%c|%m|%G"]).stdout.split("\n")
    nodes = [r.split("|") for r in rows if r.count("|") == 3]
    if not nodes:
        raise SubmissionError(f"{where}.partition: partition {req.partition!r} has no nodes")
    max_gpus = max(gpus_of(n[3]) for n in nodes)
    if req.gpus_per_node > max_gpus:
        raise SubmissionError(f"{where}.gpus_per_node: {req.gpus_per_node} GPUs per node requested, the nodes of "
                              f"partition {req.partition!r} have at most {max_gpus}")
    max_cpus = max(int(n[1].rstrip("+") or 0) for n in nodes)
    cpus = req.cpus_per_task * req.ntasks_per_node
    if cpus > max_cpus:
        raise SubmissionError(f"{where}.cpus_per_task: {req.cpus_per_task} x {req.ntasks_per_node} tasks = {cpus} CPUs "
                              f"per node, the nodes of partition {req.partition!r} have at most {max_cpus}")
    max_mem = max(mem_to_mb(n[2].rstrip("+") or "0") for n in nodes)
    if req.mem_mb > max_mem:
        raise SubmissionError(f"{where}.mem: {req.mem} per node requested, the nodes of partition "
                              f"{req.partition!r} have at most {max_mem}M")


def _which_cluster() -> str:
    """Which configuration the SLURM commands read: a shell reaches another cluster through
    SLURM_CONF (the two-node one of `slurm/local/up.sh --nodes 2`, for one)."""
    conf = os.environ.get("SLURM_CONF")
    return f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset: the cluster of the default slurm.conf"


def job_state(job_id: str) -> str:
    """The job's SLURM state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...), or GONE."""
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0].upper()
    show = _run(["scontrol", "show", "job", str(job_id), "-o"], check=False)
    if show.returncode == 0 and "JobState=" in show.stdout:
        return _kv(show.stdout)["JobState"].upper()
    acct = _run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)], check=False) \
        if shutil.which("sacct") else None
    if acct is not None and acct.returncode == 0 and acct.stdout.strip():
        return acct.stdout.split()[0].split()[0].upper()  # "CANCELLED by 0" -> CANCELLED
    return GONE


def job_reason(job_id: str) -> str:
    show = _run(["scontrol", "show", "job", str(job_id), "-o"], check=False)
    info = _kv(show.stdout) if show.returncode == 0 else {}
    return ", ".join(f"{k} {info[k]}" for k in ("JobState", "Reason", "ExitCode") if k in info)
