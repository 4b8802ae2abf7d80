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


def _foundation_measure():
    """bench/throughput.py's `measure`, the Foundation benchmark's method (warm-up, then the
    median time per batch over repeats), loaded from the file since bench/ is not a package."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_bench_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "measure", None)


def throughput(model: nn.Module, img_size: int, batch: int, iters: int, device: torch.device,
               precision: str = "fp32", warmup: int = 1) -> float:
    """Inference images/s on random input at a fixed batch, as bench/throughput.py measures it."""
    measure = _foundation_measure()
    was_training = model.training
    try:
        if measure is not None:
            return float(measure(model, img_size, batch, str(device), precision == "bf16", warmup, iters))
        model.eval()
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        times = []
        with torch.inference_mode(), autocast(device, precision):
            for i in range(warmup + iters):
                t0 = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        return batch / sorted(times)[len(times) // 2]
    finally:
        model.train(was_training)
