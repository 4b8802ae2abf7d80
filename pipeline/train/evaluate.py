"""Evaluation: Top-1 / Top-5 counts over a loader, and a model's cost (params, GFLOPs, throughput).

Accuracy is exact (every image once, no padding): the loaders are built non-distributed and
evaluation runs on rank 0. Cost follows the project conventions (design.md): GFLOPs are
multiply-adds from fvcore at batch 1, throughput is inference images/s at a fixed batch.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Accuracy:
    top1: float  # percent
    top5: float
    images: int


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def accuracy(model: nn.Module, batches, device: torch.device, precision: str = "fp32",
             max_batches: int | None = None) -> Accuracy:
    was_training = model.training
    model.eval()
    correct1 = correct5 = n = 0
    try:
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            k = min(5, logits.shape[1])
            top = logits.float().topk(k, dim=1).indices
            hit = top.eq(y[:, None])
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise RuntimeError("evaluation loader yielded no images")
    return Accuracy(100.0 * correct1 / n, 100.0 * correct5 / n, n)


def count_params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def gflops(model: nn.Module, img_size: int) -> float:
    from pipeline.models.flops import count_gflops

    return count_gflops(model, img_size)


@torch.no_grad()
def throughput(model: nn.Module, img_size: int, batch: int, iters: int, device: torch.device,
               warmup: int = 2) -> float:
    """Inference images/s on random input (timm's benchmark method: warm up, then time)."""
    try:  # the Foundation benchmark's helper, when present, so the numbers are comparable
        from pipeline.models.throughput import measure_throughput  # type: ignore
    except ImportError:
        measure_throughput = None
    if measure_throughput is not None:
        return float(measure_throughput(model, img_size=img_size, batch_size=batch, iters=iters, device=device))
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    for _ in range(warmup):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    model.train(was_training)
    return batch * iters / dt
