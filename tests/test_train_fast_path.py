"""The training step's fast path on the CPU: channels_last weights where DeepSpeed leaves the
weights to the model (one rank), NCHW where ZeRO holds them in flat buffers, NHWC batches either
way; no g++ build of DeepSpeed's shared-memory op when the engine starts; bf16 as autocast over
fp32 weights (DeepSpeed's bf16 mode breaks BatchNorm); and the loop's micro-batches, which wait
for the device only at the accumulation boundary, where a NaN stops the run before the step."""
from __future__ import annotations

import socket
from pathlib import Path

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


def test_throughput_metric_times_the_deployed_copy_and_leaves_the_student_alone():
    import timm

    import pipeline.models  # noqa: F401
    from pipeline.train.evaluate import throughput

    student = timm.create_model("hiri_vit_s", img_size=64, num_classes=4).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert throughput(student, 64, batch=2, iters=1, device=torch.device("cpu")) > 0
    assert student.training and isinstance(student.stem.norm, nn.BatchNorm2d)
    assert student.stem.conv1[0][0].weight.is_contiguous()  # still NCHW, as DeepSpeed may hold it
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no BN statistics moved either


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


# --- the loop: no host sync per micro-batch, and no NaN past the accumulation boundary ----------------

def _trainer(tmp_path, nan_at: int | None = None):
    """A real Trainer on hiri_vit_s at 64 px: 1 epoch of 2 optimiser steps of 2 micro-batches."""
    import timm

    import pipeline.models  # noqa: F401
    from pipeline.config import EmaParams, MixParams
    from pipeline.train.checkpoint import CheckpointStore
    from pipeline.train.ema_distill import EmaTeacher
    from pipeline.train.loop import Trainer
    from pipeline.train.synthetic import SyntheticData

    recipe = RecipeParams(epochs=1, warmup_epochs=0, batch_size=4, micro_batch_size=2, lr=1e-3, lr_reference_batch=4,
                          max_steps_per_epoch=2, checkpoint_every_steps=1000, log_every_steps=1000,
                          precision="fp32", zero_stage=0, mix=MixParams(prob=0.5), ema=EmaParams(decay=0.9, alpha=0.5))
    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", img_size=64, num_classes=4)
    teacher = EmaTeacher(model, decay=0.9, warmup=False, alpha=0.5)
    layout = eng.batch_layout(recipe, 1)
    cpu = torch.device("cpu")
    engine, optimizer = eng.build_engine(model, recipe, layout, cpu, "fp32")
    data = SyntheticData(64, num_classes=4, n_train=16, nan_at_step=nan_at)
    store = CheckpointStore(tmp_path / "ckpt", {"test": 1}, keep=2)
    return Trainer(name="t", engine=engine, optimizer=optimizer, teacher=teacher, recipe=recipe, layout=layout,
                   train_batches=data.train(2, 0, 1), val_batches=None, num_classes=4, seed=0, device=cpu,
                   precision="fp32", store=store, base_lr=1e-3)


@pytest.mark.slow
def test_a_micro_batch_does_not_wait_for_the_device(one_rank, tmp_path, monkeypatch):
    """Host syncs (item, tolist, float, int, bool of a tensor) made by our training code: none in a
    micro-batch, one per optimiser step (the finiteness flag), and the epoch's sums at its end.
    The loop used to sync three times per micro-batch (float(loss) twice, an all-reduce)."""
    import sys
    from collections import Counter

    syncs: Counter = Counter()
    ours = str(Path(eng.__file__).parent)
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(ours):
                syncs[(Path(frame.f_code.co_filename).name, frame.f_code.co_name)] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer = _trainer(tmp_path)
    trainer.fit()
    assert trainer.state.step == 2
    assert syncs[("loop.py", "train_step")] == 0
    assert syncs[("loop.py", "_check_window")] == 2  # one per optimiser step
    assert sum(syncs.values()) <= 2 + 3, syncs  # + the epoch's loss sum, its all_sum and the checkpoint's RNG


@pytest.mark.slow
@pytest.mark.parametrize("nan_at, where", [(0, "micro-batch 1/4"), (3, "micro-batch 4/4")])
def test_a_nan_stops_the_run_before_the_step_the_ema_update_and_any_checkpoint(one_rank, tmp_path, nan_at, where):
    from pipeline.train.loop import NonFiniteLossError

    trainer = _trainer(tmp_path, nan_at=nan_at)
    student = {k: v.detach().clone() for k, v in trainer.engine.module.named_parameters()}
    teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    step = "optimiser step 1" if nan_at < 2 else "optimiser step 2"
    with pytest.raises(NonFiniteLossError, match=rf"loss is nan \(not finite\) at {step} \(epoch 1, {where}\)"):
        trainer.fit()
    # (the poisoned forward's BatchNorm statistics are NaN in memory: the run stops, nothing keeps them)
    if nan_at < 2:  # the first window: no optimiser step at all
        assert all(torch.equal(v, student[k]) for k, v in trainer.engine.module.named_parameters())
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())
    assert all(torch.isfinite(v).all() for v in trainer.teacher.state_dict().values() if v.is_floating_point())
    if nan_at < 2:
        assert all(torch.equal(v, teacher[k]) for k, v in trainer.teacher.state_dict().items())
    assert trainer.store.complete_tags() == []


def test_accuracy_evaluates_hiri_vit_as_deployed_with_the_plain_models_counts():
    """The evaluation runs a folded channels_last copy (pipeline.train.evaluate.accuracy): it must
    count what the eval-mode model itself predicts, and leave the model as it was."""
    import timm

    import pipeline.models  # noqa: F401
    from pipeline.train.evaluate import accuracy
    from tests.model_fixtures import randomise_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", img_size=64, num_classes=10).train()
    randomise_batchnorm(model)
    batches = [(torch.randn(6, 3, 64, 64), torch.randint(0, 10, (6,))) for _ in range(3)]
    acc = accuracy(model, batches, torch.device("cpu"), "fp32", teacher_map=True)
    assert model.training and isinstance(model.stem.norm, torch.nn.BatchNorm2d)  # left as it was

    model.eval()
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        feats = model.forward_features(x)
        top = model.forward_head(feats).topk(5, dim=1).indices
        pooled = model.dense_head(feats).softmax(dim=1).mean(dim=(2, 3)).argmax(dim=1)
    pct = lambda hits: 100.0 * int(hits.sum()) / len(y)  # noqa: E731
    assert (acc.top1, acc.top5, acc.images) == (pct(top[:, 0] == y), pct((top == y[:, None]).any(1)), 18)
    assert (acc.map_top1, acc.map_agreement) == (pct(pooled == y), pct(pooled == top[:, 0]))
