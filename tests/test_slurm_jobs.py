"""Against the real one-node SLURM of slurm/local/up.sh (scripts/test.sh brings it up).
Nothing here is mocked: jobs go through sbatch, state comes from squeue/scontrol (no sacct)."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.launch import cluster, slurm
from pipeline.slurm_profiles import load_profile

pytestmark = pytest.mark.slurm


def _queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()


def _slurm_spec(root: Path, n_train: int = 16, **recipe):
    from pipeline.train.synthetic import smoke_params, smoke_spec

    p = smoke_params(**recipe)
    p = p.model_copy(update={"launch": p.launch.model_copy(update={"launcher": "slurm", "profile": "local"})})
    return smoke_spec(root, p, n_train=n_train, n_val=4)


def test_sacct_is_really_absent():
    # the premise of the state handling: this cluster has no accounting database
    assert subprocess.run(["sacct", "-j", "1"], capture_output=True).returncode != 0


@pytest.mark.parametrize("update, field", [
    ({"partition": "nope"}, "kinds.pretraining.partition"),
    ({"time": "2:00:00"}, "kinds.pretraining.time"),          # the partition allows 60 minutes
    ({"gpus_per_node": 1, "tasks_per_node": 1}, "kinds.pretraining.gpus_per_node"),
    ({"nodes": 2}, "kinds.pretraining.nodes"),
    ({"mem": "100T"}, "kinds.pretraining.mem"),
])
def test_bad_request_names_field_and_submits_nothing(update, field):
    req = load_profile("local").request("pretraining").model_copy(update=update)
    before = _queue()
    with pytest.raises(cluster.SubmissionError, match=field.replace(".", r"\.")):
        cluster.check_request(req, "local.yaml: kinds.pretraining")
    assert _queue() == before


def _crash():
    import os
    import sys

    print("about to die: the stderr tail must show this", file=sys.stderr, flush=True)
    os._exit(7)  # no result pickle: only the SLURM state can tell that it failed


def _ok(x):
    return x * 2


def test_job_state_without_sacct_success_and_failure(tmp_path):
    ex = slurm.QueueExecutor(folder=tmp_path)
    # time well over submitit's USR2 warning (90 s before the limit): a loaded machine may take
    # half a minute to start Python, and a USR2 before submitit's handler is installed kills the job
    ex.update_parameters(partition="debug", time=10, cpus_per_task=1, mem="1G")
    good, bad = ex.submit(_ok, 21), ex.submit(_crash)
    for job in (good, bad):
        rec = {"stage": "t", "job_id": job.job_id, "folder": str(tmp_path), "stderr": str(job.paths.stderr),
               "result": str(job.paths.result_pickle)}
        if job is good:
            assert slurm.wait(rec, poll_s=1) == 42
        else:
            with pytest.raises(slurm.SlurmJobError, match=r"(?s)ended FAILED.*ExitCode 7.*about to die"):
                slurm.wait(rec, poll_s=1)
    # submitit's own done() works too, through the squeue/scontrol watcher
    assert bad.done(force_check=True) and bad.state == "FAILED"


def _log_text(rec: dict) -> str:
    path = Path(rec["folder"], f"{rec['job_id']}_0_log.out")
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for_line(rec: dict, text: str, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while text not in _log_text(rec):
        assert cluster.job_state(rec["job_id"]) in cluster.ACTIVE, Path(rec["stderr"]).read_text()[-2000:]
        assert time.time() < deadline, f"{text!r} not logged within {timeout_s} s"
        time.sleep(0.5)


def _release_once_requeued(job_id: str, timeout_s: float = 600) -> threading.Thread:
    """SLURM holds a requeued batch job for about 120 s (its begin time is set ahead; the local
    cluster's slurmctld.log shows each requeued job allocated again 121-122 s later). What these
    tests check is the save at the signal and the resume, not that hold: once the job is pending
    again, start it now, as an operator would with `scontrol update`."""
    def release():
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
            if "JobState=PENDING" in show and "Restarts=0" not in show:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
                return
            if "JobState=COMPLETED" in show or "JobState=FAILED" in show or not show:
                return
            time.sleep(0.5)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def _assert_resumed_from_its_signal_checkpoint(log: str, what: str) -> None:
    saved = re.search(r"stop signal: checkpoint (step\d+) written", log)
    assert saved and f"resuming from checkpoint {saved.group(1)}" in log, (what, log[-3000:])


@pytest.mark.slow
def test_stop_signals_save_requeue_resume_and_match_uninterrupted(tmp_path):
    """Real training jobs; one is `scontrol requeue`d (SIGTERM), one gets SLURM's warning signal
    (USR2, what --signal sends before the time limit or at preemption) mid-epoch. Periodic
    checkpoints are off: each must save at the signal, be requeued, resume from that very step,
    and end with the uninterrupted run's weights, metrics and curve."""
    recipe = dict(epochs=2, max_steps_per_epoch=3, checkpoint_every_steps=1000)
    specs = {name: _slurm_spec(tmp_path / name, **recipe) for name in ("ref", "term", "usr2")}
    recs = {name: slurm.submit(spec, name) for name, spec in specs.items()}
    signals = {"term": ["scontrol", "requeue"], "usr2": ["scancel", "--signal=USR2"]}
    for name, cmd in signals.items():
        _wait_for_line(recs[name], "epoch 1/2 step 1/6")  # training, mid-epoch
        subprocess.run([*cmd, recs[name]["job_id"]], check=True)
        _release_once_requeued(recs[name]["job_id"])
    metrics = {name: slurm.wait(rec, poll_s=2) for name, rec in recs.items()}
    for name, spec in specs.items():
        slurm.collect(spec, recs[name])
    for name in signals:
        rec = recs[name]
        show = subprocess.run(["scontrol", "show", "job", rec["job_id"]], capture_output=True, text=True).stdout
        assert "Restarts=1" in show, (name, show)
        _assert_resumed_from_its_signal_checkpoint(_log_text(rec), name)
        keys = [k for k in metrics["ref"] if k != "throughput"]
        assert {k: metrics[name][k] for k in keys} == {k: metrics["ref"][k] for k in keys}, name
        a, b = (torch.load(specs[n].out_dir / "model.pt", weights_only=False) for n in ("ref", name))
        for key, t in a["state_dict"].items():
            assert torch.equal(t, b["state_dict"][key]), (name, key)
        curves = [json.loads(specs[n].plots_file.read_text()) for n in ("ref", name)]
        assert [r["loss"] for r in curves[0]] == [r["loss"] for r in curves[1]], name  # resumed epoch's row too
    assert json.loads(specs["term"].metrics_file.read_text())["top1"] == round(metrics["term"]["top1"], 4)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_job_saves_at_signal_together_and_matches_one_process(tmp_path, monkeypatch):
    """Two tasks of one SLURM job (gloo on CPU; NCCL on GPU nodes): rank, world size and
    rendezvous from submitit's JobEnvironment, as on N nodes. Requeued mid-run, both ranks save
    their ZeRO-2 partitions at the signal and resume; the result matches one local process with
    the same global batch (tests/rank_compare.py: why these tolerances and exclusions)."""
    from pipeline.launch.stage import run_stage
    from tests.rank_compare import RANK_INVARIANT_RECIPE, assert_students_match

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    profile = load_profile("local")
    two = profile.model_copy(update={"kinds": {**profile.kinds, "pretraining": profile.kinds["pretraining"].model_copy(
        update={"tasks_per_node": 2})}})
    monkeypatch.setattr(slurm, "load_profile", lambda name: two)
    recipe = dict(RANK_INVARIANT_RECIPE, max_steps_per_epoch=4, checkpoint_every_steps=1000)
    spec = _slurm_spec(tmp_path / "slurm2", n_train=24, **recipe)
    rec = slurm.submit(spec, "two")
    _wait_for_line(rec, "step 1/4")
    subprocess.run(["scontrol", "requeue", rec["job_id"]], check=True)
    _release_once_requeued(rec["job_id"])
    slurm.wait(rec, poll_s=2)
    slurm.collect(spec, rec)
    log = _log_text(rec)
    assert "x 2 ranks" in log and "ZeRO stage 2" in log, log[-3000:]
    _assert_resumed_from_its_signal_checkpoint(log, "two ranks")
    assert not spec.ckpt_dir.exists()  # the finished run clears its checkpoints

    from pipeline.train.synthetic import smoke_params, smoke_spec

    local = smoke_spec(tmp_path / "local1", smoke_params(tasks=1, **recipe), n_train=24, n_val=4)
    run_stage(local)
    assert_students_match(*(torch.load(s.out_dir / "model.pt", weights_only=False)["state_dict"]
                            for s in (local, spec)))
