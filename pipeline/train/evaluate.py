"""Evaluation: Top-1 / Top-5 counts over a loader, and a model's cost (params, GFLOPs, throughput).

Accuracy is exact (every image once, no padding): every rank evaluates its own shard of the
loader (pipeline.train.data: every world-th image from its rank on) and the counts are summed over
the ranks, so the ranks finish together and no rank waits in a collective for a long pass on
another. The counts stay on the device until that one all-reduce. Cost follows the project
conventions (design.md): GFLOPs are multiply-adds from fvcore at batch 1, throughput is inference
images/s at a fixed batch, of the model as one would deploy it
(pipeline.models.deploy.inference_model: BatchNorm folded, channels_last) at the run's precision.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.deploy import inference_model
from pipeline.models.hiri_vit import HiriViT

from .collectives import all_reduce
from .engine import to_memory_format


@dataclass
class Accuracy:
    top1: float  # percent
    top5: float
    images: int
    # teacher_map=True: Top-1 of the pooled class map AvgPool(softmax(P)) (`dense_head`), and the
    # share of images where it names the model's own Top-1 class; percent
    map_top1: float | None = None
    map_agreement: float | None = None


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX as oneDNN reports them (elsewhere emulated bf16 is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@torch.no_grad()
def accuracy(model: nn.Module, batches, device: torch.device, precision: str = "fp32",
             teacher_map: bool = False) -> Accuracy:
    """Top-1/Top-5 over `batches` (this rank's shard), summed over the ranks: every rank calls it.

    A HIRI-ViT is evaluated as deployed (`inference_model`: BatchNorm and identities folded,
    channels_last weights, on a copy): the same function as the eval-mode model, and the EMA
    teacher's NCHW weights no longer meet NHWC batches. A timm backbone (Table 9) runs as it is."""
    was_training = model.training
    model.eval()
    net = inference_model(model) if isinstance(model, HiriViT) else model
    # correct top-1, correct top-5, map top-1 correct, map agrees with the model's top-1, images
    counts = torch.zeros(5, dtype=torch.int64, device=device)
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = to_memory_format(x)  # the convolutions follow their input's layout (an NCHW EMA teacher too)
            with autocast(device, precision):
                features = net.forward_features(x)
                logits = net.forward_head(features)
                if teacher_map:  # one backbone pass for both heads
                    pooled_map = net.dense_head(features).float().softmax(dim=1).mean(dim=(2, 3))
            k = min(5, logits.shape[1])
            top = logits.float().topk(k, dim=1).indices
            hit = top.eq(y[:, None])
            counts[0] += hit[:, 0].sum()
            counts[1] += hit.any(dim=1).sum()
            if teacher_map:
                map_top1 = pooled_map.argmax(dim=1)
                counts[2] += map_top1.eq(y).sum()
                counts[3] += map_top1.eq(top[:, 0]).sum()
            counts[4] += len(y)
    finally:
        model.train(was_training)
    correct1, correct5, map_correct, agree, n = all_reduce(counts).tolist()
    if n == 0:
        raise RuntimeError("evaluation loader yielded no images")
    pct = lambda count: 100.0 * count / n  # noqa: E731
    if teacher_map:
        return Accuracy(pct(correct1), pct(correct5), n, pct(map_correct), pct(agree))
    return Accuracy(pct(correct1), pct(correct5), n)


def count_params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def gflops(model: nn.Module, img_size: int) -> float:
    """fvcore's count on an fp32 CPU copy: fvcore traces with a CPU fp32 input, which a CUDA or a
    bf16 model refuses ("expected scalar type BFloat16 but found Float"), after the whole run."""
    import copy

    from pipeline.models.flops import count_gflops

    return count_gflops(copy.deepcopy(model).to(device="cpu", dtype=torch.float32), img_size)


def timed_forward(model: nn.Module, img_size: int, batch: int, device: torch.device, precision: str = "fp32",
                  memory_format: torch.memory_format = torch.contiguous_format):
    """A function that runs one inference batch of random input (laid out in `memory_format`) and
    returns its seconds: the unit of bench/throughput.py and of `throughput` below. Puts the model
    in eval mode."""
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=memory_format)
    model = model.to(device).eval()

    def step() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(device, precision):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def throughput(model: nn.Module, img_size: int, batch: int, iters: int, device: torch.device,
               precision: str = "fp32", warmup: int = 1) -> float:
    """Inference images/s of `model` deployed (a BatchNorm-folded channels_last copy; `model` itself
    is left as it is) on random input at a fixed batch: warm-up, then the median batch time."""
    step = timed_forward(inference_model(model), img_size, batch, device, precision, torch.channels_last)
    for _ in range(warmup):
        step()
    return batch / statistics.median(step() for _ in range(iters))
