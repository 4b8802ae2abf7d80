"""Against the real one-node SLURM of slurm/local/up.sh (scripts/test.sh brings it up).
Nothing here is mocked: jobs go through sbatch, state comes from squeue/scontrol (no sacct)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pipeline.launch import cluster, slurm
from pipeline.launch.profiles import load_profile

pytestmark = pytest.mark.slurm


def _queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()


def _slurm_spec(root: Path, **recipe):
    from pipeline.train.synthetic import smoke_params, smoke_spec

    p = smoke_params(**recipe)
    p = p.model_copy(update={"launch": p.launch.model_copy(update={"launcher": "slurm", "profile": "local"})})
    return smoke_spec(root, p, n_train=16, n_val=4)


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
    ex.update_parameters(partition="debug", time=2, cpus_per_task=1, mem="1G")
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


@pytest.mark.slow
def test_requeue_mid_run_resumes_and_matches_uninterrupted(tmp_path):
    """Two real training jobs side by side; one is `scontrol requeue`d after its first checkpoint.
    It must restart (Restarts=1), resume from the checkpoint, and end with the same weights and metrics."""
    recipe = dict(epochs=1, max_steps_per_epoch=6, checkpoint_every_steps=2)
    ref_spec, rq_spec = _slurm_spec(tmp_path / "ref", **recipe), _slurm_spec(tmp_path / "rq", **recipe)
    ref, rq = slurm.submit(ref_spec, "ref"), slurm.submit(rq_spec, "rq")
    latest = rq_spec.ckpt_dir / "latest"
    deadline = time.time() + 600
    while not latest.exists():
        assert cluster.job_state(rq["job_id"]) in cluster.ACTIVE, Path(rq["stderr"]).read_text()[-2000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(1)
    assert not Path(rq["result"]).exists()  # mid-run
    subprocess.run(["scontrol", "requeue", rq["job_id"]], check=True)
    m_rq, m_ref = slurm.wait(rq, poll_s=2), slurm.wait(ref, poll_s=2)
    show = subprocess.run(["scontrol", "show", "job", rq["job_id"]], capture_output=True, text=True).stdout
    assert "Restarts=1" in show
    assert "resuming from checkpoint" in Path(rq["folder"], f"{rq['job_id']}_0_log.out").read_text()
    for spec, rec in ((ref_spec, ref), (rq_spec, rq)):
        slurm.collect(spec, rec)
    keys = [k for k in m_ref if k != "throughput"]
    assert {k: m_rq[k] for k in keys} == {k: m_ref[k] for k in keys}
    a, b = (torch.load(s.out_dir / "model.pt", weights_only=False) for s in (ref_spec, rq_spec))
    for name, t in a["student"].items():
        assert torch.equal(t, b["student"][name]), name
    assert json.loads(rq_spec.metrics_file.read_text())["top1"] == round(m_rq["top1"], 4)  # collected into place
