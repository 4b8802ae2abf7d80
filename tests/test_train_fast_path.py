"""The training step's fast path on the CPU: channels_last weights where DeepSpeed leaves the
weights to the model (one rank), NCHW where ZeRO holds them in flat buffers, NHWC batches either
way; no g++ build of DeepSpeed's shared-memory op when the engine starts; and bf16 as autocast
over fp32 weights (DeepSpeed's bf16 mode breaks BatchNorm)."""
from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from pipeline.config import RecipeParams
from pipeline.train import engine as eng


@pytest.fixture(scope="module")
def one_rank():
    import os

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    eng.init_distributed(torch.device("cpu"))
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _step(engine) -> torch.Tensor:
    x = eng.to_memory_format(torch.randn(2, 3, 12, 12))
    assert x.is_contiguous(memory_format=torch.channels_last)
    before = engine.module[0].weight.detach().clone()
    engine.backward(engine(x).square().mean())
    engine.step()
    return before


@pytest.mark.parametrize("stage, channels_last", [(0, True), (2, False)])
def test_weights_layout_follows_what_deepspeed_allows_and_training_steps(one_rank, stage, channels_last):
    recipe = RecipeParams(batch_size=2, micro_batch_size=2, lr=1e-2, lr_reference_batch=2, zero_stage=2,
                          precision="fp32")
    engine, _ = eng.build_engine(_net(), recipe, eng.batch_layout(recipe, 1), torch.device("cpu"), "fp32",
                                 stage=stage)
    w = engine.module[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) == channels_last
    before = _step(engine)
    after = engine.module[0].weight  # the optimiser updated the model's own (re-laid-out) weights
    assert not torch.equal(before, after.detach())
    assert after.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_engine_start_builds_no_shm_op(one_rank):
    import importlib

    assert importlib.import_module("deepspeed.comm.torch").build_shm_op() is None


# --- precision: bf16 autocast over fp32 weights, because DeepSpeed's bf16 mode breaks BatchNorm -------

def test_deepspeed_bf16_mode_breaks_batchnorm_so_the_engine_never_asks_for_it(one_rank):
    import deepspeed

    recipe = RecipeParams(batch_size=2, micro_batch_size=2, lr=1e-2, lr_reference_batch=2, precision="bf16")
    config = eng.deepspeed_config(recipe, eng.batch_layout(recipe, 1), torch.device("cuda"), "bf16")
    assert config["bf16"]["enabled"] is False  # on a GPU too
    # What DeepSpeed's bf16 mode does to a BatchNorm net (here on the CPU): bf16 weights, fp32 stats.
    config["bf16"]["enabled"] = True
    net = _net()
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.AdamW(net.parameters()), config=config,
                                      dist_init_required=False)
    assert engine.module[1].weight.dtype == torch.bfloat16 and engine.module[1].running_mean.dtype == torch.float32
    with pytest.raises(RuntimeError, match="expected scalar type BFloat16 but found Float"):
        engine(torch.randn(2, 3, 12, 12).bfloat16())


def test_bf16_autocast_over_fp32_weights_trains_a_batchnorm_net(one_rank):
    from pipeline.train.evaluate import autocast

    recipe = RecipeParams(batch_size=2, micro_batch_size=2, lr=1e-2, lr_reference_batch=2, precision="bf16")
    engine, _ = eng.build_engine(_net(), recipe, eng.batch_layout(recipe, 1), torch.device("cpu"), "bf16")
    bn = engine.module[1]
    stats, before = bn.running_mean.clone(), engine.module[0].weight.detach().clone()
    with autocast(torch.device("cpu"), "bf16"):
        out = engine(eng.to_memory_format(torch.randn(2, 3, 12, 12)))
    assert out.dtype == torch.bfloat16  # the arithmetic ran in bf16
    engine.backward(out.float().square().mean())
    engine.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in engine.module.parameters())
    assert bn.running_mean.dtype == torch.float32 and not torch.equal(bn.running_mean, stats)
    assert not torch.equal(engine.module[0].weight.detach(), before)
