"""The transfer stages under the real DVC, in a temporary copy of the repo: the built-in COCO and
ADE20K sets (tiny), pretraining weights of the real hiri_vit_s layout standing in for
train_hiri_s_448's (random values: what is tested here is the pipeline, not the learning, which
the README's numbers and docs/transfer.md show), Mask R-CNN killed mid-run and resumed, metrics /
plots / MLflow beside the paper's row, a second repro idle, UPerNet end to end as a SLURM job."""
from __future__ import annotations

import json
import subprocess

import pytest
import timm
import torch
import yaml

from pipeline.models.hiri_vit import model_file
from tests.kill import sigkill_once_exists
from tests.repo_copy import DVC, copy_repo, repo_env, run

pytestmark = [pytest.mark.dvc, pytest.mark.slow]
COCO_KEYS = {"ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box", "ap_mask", "ap50_mask", "ap75_mask",
             "params_m", "gflops"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    def tiny(p):
        b = p["transfer"]["builtin"]
        b["coco"].update(train_images=8, val_images=4, min_side=96, max_side=128, categories=3)
        b["ade20k"].update(train_images=8, val_images=4, min_side=96, max_side=128, classes=4)
        p["transfer"]["detection"]["builtin"].update(
            epochs=2, lr_steps=[2], batch_size=2, micro_batch_size=2, warmup_iters=2, min_size=128, max_size=192,
            max_iters_per_epoch=3, checkpoint_every_iters=1, log_every_iters=1, eval_batch_size=2)
        p["transfer"]["segmentation"]["builtin"].update(
            iters=4, warmup_iters=1, batch_size=2, micro_batch_size=2, scale=[256, 64], crop_size=64,
            eval_every_iters=2, checkpoint_every_iters=1, log_every_iters=1)

    env = repo_env(SHELL="/bin/bash", MLFLOW_TRACKING_URI=None)
    root = copy_repo(tmp_path_factory.mktemp("t") / "repo", tiny)
    weights = root / "outputs" / "train_hiri_s_448"
    weights.mkdir(parents=True)
    student, ema = (timm.create_model("hiri_vit_s", img_size=448, num_classes=10) for _ in range(2))
    torch.save(model_file(student, ema, "hiri_vit_s", 10, "train_hiri_s_448"), weights / "model.pt")
    return root, env


def test_maskrcnn_stage_kill_resume_metrics_mlflow(repo):
    repo, env = repo
    stage = "coco_maskrcnn_hiri_s"
    ckpt = repo / "outputs" / "checkpoints" / stage
    run([DVC, "repro", "prepare_coco"], repo, env)
    victim = subprocess.Popen([DVC, "repro", "--single-item", stage], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    sigkill_once_exists(victim, ckpt / "step000000004" / "COMPLETE", timeout_s=600)
    assert not (repo / "metrics" / f"{stage}.json").exists()

    out = run([DVC, "repro", "--single-item", stage], repo, env)
    assert "resumed from checkpoint step00000000" in out, out
    metrics = json.loads((repo / "metrics" / f"{stage}.json").read_text())
    assert set(metrics) == COCO_KEYS and abs(metrics["params_m"] - 51.0) < 0.5 and metrics["gflops"] > 100
    # an area range without ground truth in the tiny val set scores null, never a number out of range
    assert all(metrics[k] is None or 0.0 <= metrics[k] <= 100.0 for k in COCO_KEYS - {"params_m", "gflops"})
    assert metrics["ap_box"] is not None and metrics["ap_mask"] is not None
    curve = json.loads((repo / "plots" / f"{stage}.json").read_text())
    assert [r["iter"] for r in curve] == [3, 6] and {"loss", "lr", "ap_box", "ap_mask"} <= set(curve[0])
    assert (repo / "outputs" / stage / "model.pt").is_file() and not ckpt.exists()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("table4-coco")
    runs = client.search_runs([exp.experiment_id])
    (paper,) = [r for r in runs if r.data.tags.get("source") == "paper"]
    assert paper.data.tags.get("reproduced_by_stage") == stage and paper.data.metrics["ap_mask"] == 43.0
    (ours,) = [r for r in runs if r is not paper]
    assert ours.info.status == "FINISHED" and ours.data.tags["dvc_stage"] == stage
    assert {"ap_box", "ap_mask", "params_m"} <= set(ours.data.metrics)

    assert "Running stage" not in run([DVC, "repro", "--single-item", stage], repo, env)


@pytest.mark.slurm
def test_upernet_stage_as_a_slurm_job(repo):
    """The same launcher as training: the stage submits a SLURM job (the local one-node cluster)
    that runs the transfer worker, and collects its staged outputs."""
    repo, env = repo
    stage = "ade20k_upernet_hiri_s"
    run([DVC, "repro", "prepare_ade20k"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["launch"].update(launcher="slurm", profile="local")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([DVC, "repro", "--single-item", stage], repo, env)
    assert "[slurm] submitted job" in out and stage in out
    metrics = json.loads((repo / "metrics" / f"{stage}.json").read_text())
    assert set(metrics) == {"miou", "params_m", "gflops"} and 0.0 <= metrics["miou"] <= 100.0
    assert abs(metrics["params_m"] - 61.4) < 0.7
    curve = json.loads((repo / "plots" / f"{stage}.json").read_text())
    assert [r["iter"] for r in curve] == [2, 4] and "miou" in curve[0]
