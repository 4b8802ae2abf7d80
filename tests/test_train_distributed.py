"""ZeRO-2 over 2 processes (gloo, launched by submitit's LocalExecutor) reaches the same
parameters as 1 process with the same global batch (there: 2 accumulation steps)."""
import pytest
import torch

from pipeline.launch.stage import run_stage
from pipeline.train.synthetic import smoke_params, smoke_spec
from tests.rank_compare import RANK_INVARIANT_RECIPE, assert_students_match

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_zero2_two_processes_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    recipe = dict(RANK_INVARIANT_RECIPE, max_steps_per_epoch=3, checkpoint_every_steps=100)
    weights = {}
    for tasks in (1, 2):
        spec = smoke_spec(tmp_path / f"w{tasks}", smoke_params(tasks=tasks, **recipe), n_train=24, n_val=4)
        run_stage(spec)
        weights[tasks] = torch.load(spec.out_dir / "model.pt", weights_only=False)
    one, two = weights[1]["state_dict"], weights[2]["state_dict"]
    assert_students_match(one, two)
    # and training did move the weights (the comparison is not between two untouched inits)
    import timm

    import pipeline.models  # noqa: F401

    torch.manual_seed(0)
    init = timm.create_model("hiri_vit_s", img_size=224, num_classes=4).state_dict()
    moved = sum(not torch.allclose(init[k].float(), one[k].float()) for k in one if one[k].is_floating_point())
    assert moved > len(one) // 2


def _rank_zero_fails():
    import time

    import torch.distributed as dist

    from pipeline.launch.local import distributed_env

    env = distributed_env()
    if env["rank"] == 0:
        raise RuntimeError("rank 0 broke")
    dist.init_process_group("gloo")  # would wait for rank 0's store until the 30-minute timeout
    time.sleep(600)


def test_a_failed_rank_stops_the_others_and_names_itself(tmp_path, monkeypatch):
    import time

    from pipeline.config import LaunchParams
    from pipeline.launch.local import LaunchError, run_local

    import signal

    import psutil

    monkeypatch.setenv("MASTER_PORT", "1")  # an inherited rendezvous must not leak into the job
    # as in a job started in the background of a non-interactive shell (CI scripts, nohup ... &):
    # SIGINT ignored, which submitit's cancel relies on; rank 1 then waits in C++ for rank 0's
    # store, where no Python signal handler runs either
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    t0 = time.monotonic()
    try:
        with pytest.raises(LaunchError, match=r"rank 0 failed, the other ranks were stopped(.|\n)*rank 0 broke"):
            run_local(_rank_zero_fails, launch=LaunchParams(tasks=2), folder=tmp_path, name="t")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 120
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes of the failed job still running: {left}"
