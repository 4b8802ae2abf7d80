"""What a GPU job needs of the run's set-up and end, shown on the CPU: DeepSpeed's accelerator is
chosen inside the job from its device, the FLOP count runs on an fp32 CPU copy of a bf16 model,
and SyncBatchNorm is a GPU-only option that a CPU run refuses by name."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.train import engine as eng

REPO = Path(__file__).resolve().parents[1]


def test_the_job_picks_deepspeeds_accelerator_from_its_own_device():
    """An inherited DS_ACCELERATOR (a login node's, exported by sbatch) must not decide: here the
    job's device is the CPU and the inherited value says cuda."""
    code = ("import torch; from pipeline.train.engine import select_accelerator; "
            "select_accelerator(torch.device('cpu')); "
            "from deepspeed.accelerator import get_accelerator; print('accelerator', get_accelerator().device_name())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DS_ACCELERATOR": "cuda"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accelerator cpu" in out.stdout  # and init_distributed, which every rank calls, calls it first


def test_gflops_are_counted_on_an_fp32_cpu_copy_of_a_bf16_model():
    import timm

    import pipeline.models  # noqa: F401
    from pipeline.train.evaluate import gflops

    model = timm.create_model("hiri_vit_s", img_size=64, num_classes=4)
    fp32 = gflops(model, 64)
    model = model.to(torch.bfloat16).to(memory_format=torch.channels_last)  # as a bf16 run leaves it
    assert gflops(model, 64) == pytest.approx(fp32)
    assert next(model.parameters()).dtype == torch.bfloat16  # the run's model is left as it was


def test_sync_batchnorm_is_a_gpu_option():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert eng.sync_batchnorm(net, False, torch.device("cuda", 0), 16) is net
    assert eng.sync_batchnorm(net, True, torch.device("cpu"), 1) is net  # one rank: nothing to sync
    synced = eng.sync_batchnorm(net, True, torch.device("cuda", 0), 16)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    with pytest.raises(ValueError, match="sync_bn true needs GPUs"):
        eng.sync_batchnorm(net, True, torch.device("cpu"), 2)
