"""Every collective of the training and transfer runs, on the device the process group reduces on.

NCCL reduces only CUDA tensors ("No backend type associated with device type cpu"), gloo CPU
ones; a flag or a count made with `torch.tensor(...)` lands on the CPU whatever the engine's
device. So no other module calls torch.distributed's collectives: they call these, which place
their tensors on `comm_device()` (tests/test_collectives.py holds both: the placement, and that no
module outside this one reaches torch.distributed's collectives).

With one process (or none initialised) every function is the identity, without a device copy.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device() -> torch.device:
    """Where the process group's backend takes tensors: this rank's GPU for NCCL, else the CPU."""
    if world()[1] > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`t` reduced over the ranks (op: sum or max), as a tensor on comm_device(); one rank: `t`."""
    if world()[1] == 1:
        return t
    t = t.to(comm_device(), non_blocking=True)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def all_sum(values: list[float]) -> list[float]:
    """Host numbers summed over the ranks (float64; one host sync)."""
    return all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()


def all_max(value: int) -> int:
    """The largest of the ranks' integers (one host sync)."""
    return int(all_reduce(torch.tensor([value], dtype=torch.int64), op="max")[0])


def all_gather(t: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's `t` (same shape on every rank), in rank order, on `t`'s device. The signature of
    torchmetrics' `dist_sync_fn`, so that a metric's state syncs through here too."""
    if world()[1] == 1:
        return [t]
    sent = t.to(comm_device(), non_blocking=True).contiguous()
    parts = [torch.empty_like(sent) for _ in range(world()[1])]
    dist.all_gather(parts, sent, group=group)
    return [p.to(t.device) for p in parts]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def gather_objects(items: list) -> list:
    """Every rank's `items`, concatenated in rank order (pickled; NCCL sends them through the GPU
    that torch.cuda.set_device chose, which pipeline.launch.local.rank_device does)."""
    if world()[1] == 1:
        return items
    parts = [None] * world()[1]
    dist.all_gather_object(parts, items)
    return [x for p in parts for x in p]


BN_STATS = ("running_mean", "running_var")


def average_batchnorm_stats(model: nn.Module) -> None:
    """Average the BatchNorm running statistics over the ranks in one all-reduce per dtype (timm's
    distribute_bn makes one per buffer: 128 per step for HIRI-ViT-L, each a launch and a latency)."""
    n = world()[1]
    if n == 1:
        return
    bufs = [b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in BN_STATS]
    for dtype in sorted({b.dtype for b in bufs}, key=str):
        group = [b for b in bufs if b.dtype == dtype]
        flat = all_reduce(_flatten_dense_tensors(group)).div_(n)
        for buf, avg in zip(group, _unflatten_dense_tensors(flat, group)):
            buf.copy_(avg, non_blocking=True)
