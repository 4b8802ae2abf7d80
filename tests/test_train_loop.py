"""Whole training runs of the real hiri_vit_s (at 224, on a tiny synthetic set) through submitit:
NaN handling, and SIGKILL + resume giving the same weights as an uninterrupted run (the resumed
run logging to a real MLflow tracking server)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.launch.local import LaunchError
from pipeline.train.checkpoint import MARKER
from pipeline.launch.stage import run_stage
from pipeline.train.synthetic import smoke_params, smoke_spec
from tests.kill import sigkill_once_exists
from tests.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # batch 4 = 2 micro-batches of 2: micro-batch 5 (0-based) belongs to optimiser step 3
    spec = smoke_spec(tmp_path, smoke_params(epochs=1, max_steps_per_epoch=6), n_train=32, nan_at_step=5)
    with pytest.raises(LaunchError, match=r"loss is nan \(not finite\) at optimiser step 3 \(epoch 1, micro-batch 6/12\)"):
        run_stage(spec)
    ckpt = spec.ckpt_dir
    assert (ckpt / "latest").read_text() == "step000000002"
    assert (ckpt / "step000000002" / MARKER).is_file()
    assert not (spec.out_dir / "model.pt").exists() and not spec.metrics_file.exists()


def test_a_crash_after_training_keeps_the_weights_and_the_rerun_only_evaluates(tmp_path):
    marker = tmp_path / "fail_once"
    marker.touch()
    spec = smoke_spec(tmp_path, smoke_params(epochs=1, max_steps_per_epoch=2), n_train=16, n_val=4,
                      fail_final_eval=str(marker))
    with pytest.raises(LaunchError, match="the final evaluation failed"):
        run_stage(spec)
    weights = torch.load(spec.out_dir / "model.pt", weights_only=False)  # written before the evaluation
    assert (spec.ckpt_dir / "latest").read_text() == "step000000002" and not spec.metrics_file.exists()
    metrics = run_stage(spec)
    logs = sorted((tmp_path / "outputs" / "submitit" / "train_t").glob("*_0_log.out"), key=lambda p: p.stat().st_mtime)
    out = logs[-1].read_text()  # rank 0 of the rerun
    assert "resuming from checkpoint step000000002: epoch 2, step 2/2" in out, out
    assert " step 1/2 " not in out and " step 2/2 loss" not in out, out  # no training step ran again
    assert set(metrics) >= {"top1", "v2_top1", "gflops"} and spec.metrics_file.is_file()
    again = torch.load(spec.out_dir / "model.pt", weights_only=False)
    assert all(torch.equal(again["state_dict"][k], v) for k, v in weights["state_dict"].items())
    assert not spec.ckpt_dir.exists()  # cleared once the run completed


def _driver(root: Path, cfg: dict, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.train.synthetic", str(root), json.dumps(cfg)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(root: Path) -> dict:
    return torch.load(root / "outputs" / "train_t" / "model.pt", weights_only=False)


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # Mixing, drop path and the EMA teacher all on, so every RNG stream matters.
    cfg = dict(epochs=2, max_steps_per_epoch=3, drop_path_rate=0.1,
               mix={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1},
               ema={"decay": 0.9, "warmup": True, "alpha": 0.5}, data={"n_train": 32, "n_val": 8})
    env = dict(os.environ)
    a, b = tmp_path / "a", tmp_path / "b"
    # The uninterrupted run reports to a dead tracking server: it must warn once and still finish.
    dead = _driver(a, cfg, {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    out_a, _ = dead.communicate(timeout=600)
    assert dead.returncode == 0, out_a
    assert out_a.count("WARNING: MLflow tracking at http://127.0.0.1:9 failed") == 1, out_a
    assert set(json.loads((a / "metrics" / "train_t.json").read_text())) >= {"top1", "ema_top1", "throughput"}

    # Same run, SIGKILLed (the launcher only, as when `dvc repro` is killed) once a mid-epoch
    # checkpoint of epoch 2 is complete, then started again; both report to a real tracking
    # server on loopback, as a cluster's stages do (README, "Tracking on a cluster")
    with mlflow_server(tmp_path / "mlflow-server") as uri:
        env_b = {**env, "MLFLOW_TRACKING_URI": uri}
        victim = _driver(b, cfg, env_b)
        sigkill_once_exists(victim, b / "outputs" / "checkpoints" / "train_t" / "step000000004" / MARKER,
                            timeout_s=600)
        assert not (b / "outputs" / "train_t" / "model.pt").exists()
        rerun = _driver(b, cfg, env_b)
        out_b, _ = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, out_b
        assert "resuming from checkpoint step00000000" in out_b, out_b
        assert "epoch 2, step " in out_b
        _assert_one_tracked_run(uri, tmp_path / "mlflow-server" / "artifacts")

    wa, wb = _weights(a), _weights(b)
    for part in ("state_dict", "state_dict_ema"):
        assert wa[part].keys() == wb[part].keys()
        for k in wa[part]:
            assert torch.equal(wa[part][k], wb[part][k]), f"{part}.{k} differs after resume"
    assert not (b / "outputs" / "checkpoints" / "train_t").exists()  # cleared once the weights are out


def _assert_one_tracked_run(uri: str, artifact_root: Path) -> None:
    """The killed run and its rerun are one MLflow run on the server, finished, with the final
    metrics, a curve row per epoch and the artifacts, uploaded through the server (proxied)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("table2-imagenet")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server stores them, not a shared mount
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("source") != "paper"]
    assert run.info.run_name == "hiri_vit_s@224" and run.info.status == "FINISHED"
    assert {"top1", "ema_top1", "throughput", "gflops"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [3, 6]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "metrics")} == {"metrics/train_t.json"}
    assert list(artifact_root.rglob("train_t.json")), f"no artifact stored under the server's root {artifact_root}"


def test_a_checkpoint_holds_every_ranks_curve_tally_and_each_rank_resumes_its_own():
    # DeepSpeed writes the client state from rank 0 alone: rank 1 must not resume with rank 0's sums
    from pipeline.train.loop import LoopState

    tallies = [[1.5, 2, 4, 0.3], [2.25, 2, 4, 0.4]]  # loss sum, micro-batches, images, seconds
    client = LoopState(epoch=1, micro_in_epoch=2, step=5, partial=tallies[0]).client_state(tallies)
    assert [LoopState.from_client_state(client, rank).partial for rank in (0, 1)] == tallies
    assert LoopState.from_client_state(client, 1).step == 5
    older = {k: v for k, v in client.items() if k != "partial"}  # a checkpoint from before the tallies
    assert LoopState.from_client_state(older, 1).partial == [0.0, 0, 0, 0.0]
