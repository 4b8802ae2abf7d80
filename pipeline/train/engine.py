"""DeepSpeed initialisation: the engine drives backward, gradient reduction (ZeRO), clipping and
the optimiser step; our own loop (pipeline.train.loop) drives everything else.

The optimiser is torch's AdamW with timm's parameter groups (no weight decay on norms, biases and
the model's `no_weight_decay()` names), handed to DeepSpeed as a client optimiser, so that
plain PyTorch and DeepSpeed run the same update (bench/train_step.py compares them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.optim import create_optimizer_v2
from torch import nn

if TYPE_CHECKING:  # a type only: bench/gpu_smoke.py runs this on machines without pydantic
    from pipeline.config import RecipeParams


class BatchLayoutError(ValueError):
    """The global batch cannot be split into micro-batches over the ranks; `field` is the recipe
    key to change (batch_size or micro_batch_size)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BatchLayout:
    global_batch: int
    micro_batch: int  # per rank per forward/backward
    accumulation: int
    world_size: int


def batch_layout(recipe: RecipeParams, world_size: int) -> BatchLayout:
    """The recipe's global batch over `world_size` ranks. The micro-batch per rank is the recipe's
    when it sets one (accumulation fills the rest), else batch_size / world_size (none)."""
    batch, micro = recipe.batch_size, recipe.micro_batch_size
    if micro is None:
        if batch % world_size:
            raise BatchLayoutError("batch_size", f"batch_size {batch} does not split over {world_size} ranks "
                                   f"(micro_batch_size null: batch_size / ranks); use a rank count that divides "
                                   f"it, or set micro_batch_size")
        return BatchLayout(batch, batch // world_size, 1, world_size)
    per_step = micro * world_size
    if per_step > batch:
        raise BatchLayoutError("micro_batch_size", f"micro_batch_size {micro} x {world_size} ranks = {per_step} "
                               f"images per step is more than batch_size {batch}: lower it")
    if batch % per_step:
        raise BatchLayoutError("micro_batch_size", f"batch_size {batch} is not a multiple of micro_batch_size "
                               f"{micro} x {world_size} ranks = {per_step}")
    return BatchLayout(batch, micro, batch // per_step, world_size)


def scaled_lr(recipe: RecipeParams) -> float:
    """Linear scaling rule (Goyal et al.; DeiT and Swin scale lr with the global batch likewise)."""
    return recipe.lr * recipe.batch_size / recipe.lr_reference_batch


# channels_last (NHWC) for the model and every batch: oneDNN's and cuDNN's fast convolution,
# BatchNorm and elementwise kernels are NHWC ones; in NCHW HIRI-ViT's high-resolution stages run
# their depthwise convolutions, GELU and BatchNorm as separate memory-bound passes with layout
# reorders between them (bench/train_step.py measures the step both ways).
MEMORY_FORMAT = torch.channels_last


def to_memory_format(x: torch.Tensor) -> torch.Tensor:
    """A batch in the training layout (4-D image tensors only; a no-op when already there)."""
    return x.contiguous(memory_format=MEMORY_FORMAT) if x.ndim == 4 else x


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units on this CPU (AVX512-BF16 or AMX), as oneDNN reports them."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16' (bf16 autocast over fp32 weights, on every device). auto: bf16 on GPU; on
    CPU only where the processor has native bf16 (otherwise emulated bf16 is slower than fp32)."""
    if requested != "auto":
        if requested == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            raise ValueError("precision 'bf16' requested but this CPU has no native bf16 (avx512_bf16/amx)")
        return requested
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def zero_stage(recipe: RecipeParams, world_size: int) -> int:
    """The ZeRO stage the engine runs: the recipe's, except 0 on a single rank, where there is
    nothing to partition and ZeRO's flat buffers only add copies (about 15 % of a CPU step for
    hiri_vit_s at batch 8; bench/train_step.py)."""
    return recipe.zero_stage if world_size > 1 else 0


def sync_batchnorm(model: nn.Module, sync: bool, device: torch.device, world_size: int) -> nn.Module:
    """The model with SyncBatchNorm where `sync` asks for it and there are ranks to sync (torch's
    SyncBatchNorm reduces on GPUs only, so a CPU run that asks for it is refused)."""
    if not sync or world_size == 1:
        return model
    if device.type != "cuda":
        raise ValueError(f"sync_bn true needs GPUs (torch's SyncBatchNorm reduces on CUDA only); this rank runs "
                         f"on {device.type}: set sync_bn false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def deepspeed_config(recipe: RecipeParams, layout: BatchLayout, device: torch.device, precision: str,
                     stage: int | None = None) -> dict:
    stage = zero_stage(recipe, layout.world_size) if stage is None else stage
    zero = {"stage": stage}
    if stage in (1, 2):
        # contiguous gradient buffers; overlap_comm only helps with CUDA streams.
        zero.update(contiguous_gradients=True, overlap_comm=device.type == "cuda",
                    reduce_scatter=True, allgather_bucket_size=int(5e8), reduce_bucket_size=int(5e8))
    return {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.accumulation,
        "gradient_clipping": recipe.clip_grad or 0.0,
        "zero_optimization": zero,
        # Never DeepSpeed's bf16 mode: it casts the parameters to bf16 but not BatchNorm's running
        # statistics, and batch_norm then refuses the mix ("expected scalar type BFloat16 but found
        # Float"; tests/test_train_fast_path.py shows it on the CPU). bf16 is torch.autocast over fp32
        # weights instead, on every device (pipeline.train.loop): fp32 master weights, optimiser
        # and BN statistics, bf16 matmuls and convolutions.
        "bf16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: nn.Module, recipe: RecipeParams) -> torch.optim.Optimizer:
    # fused=True: one pass over memory per step instead of ~10; it matters most for ZeRO, whose
    # optimiser sees one flat partition far larger than the caches (bench/train_step.py).
    return create_optimizer_v2(model, opt="adamw", lr=scaled_lr(recipe), weight_decay=recipe.weight_decay,
                               betas=tuple(recipe.betas), eps=recipe.eps, fused=_fused_ok(model))


def _fused_ok(model: nn.Module) -> bool:
    p = next(model.parameters())
    return p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)


def select_accelerator(device: torch.device) -> str:
    """Make DeepSpeed run on `device`'s kind ("cuda" or "cpu"), decided here, inside the job, from
    what the allocation has: an inherited DS_ACCELERATOR (exported on a login node without GPUs and
    passed on by sbatch) would put the engine on the CPU beside CUDA batches. DeepSpeed reads the
    variable once, when first imported; an engine module imported earlier is switched explicitly."""
    import sys

    name = "cuda" if device.type == "cuda" else "cpu"
    os.environ["DS_ACCELERATOR"] = name
    if "deepspeed" in sys.modules:
        from deepspeed.accelerator import get_accelerator, set_accelerator

        if get_accelerator().device_name() != name:
            if name == "cuda":
                from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
            else:
                from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
            set_accelerator(Accelerator())
    return name


def init_distributed(device: torch.device) -> None:
    """torch.distributed from the env:// variables (exported from submitit's JobEnvironment by
    pipeline.launch); gloo on CPU, NCCL on GPU; DeepSpeed's accelerator from `device`."""
    select_accelerator(device)
    import deepspeed

    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if var not in os.environ:
            raise RuntimeError(f"{var} is not set: start training through pipeline.launch "
                               "(submitit), which exports the rendezvous from the JobEnvironment")
    if device.type == "cpu":
        _skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False)


def _skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend compiles its shared-memory all-reduce with g++ when it starts (3-5
    minutes on 2 busy cores, once per machine: the main job's largest cost from a fresh machine).
    Only DeepSpeed's inference all-reduce uses that op; training's collectives go through
    torch.distributed (gloo), and without the op DeepSpeed takes that path everywhere."""
    import importlib

    # by module name: the attribute `deepspeed.comm.torch` is PyTorch itself
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_torch, "build_shm_op"):  # as in DeepSpeed 0.19; a version without it just builds
        ds_torch.build_shm_op = lambda: None


def build_engine(model: nn.Module, recipe: RecipeParams, layout: BatchLayout, device: torch.device,
                 precision: str, stage: int | None = None):
    """DeepSpeed engine wrapping the model and its AdamW; returns (engine, optimizer).
    stage: force a ZeRO stage (benchmarks); default `zero_stage(recipe, world size)`."""
    import deepspeed

    optimizer = build_optimizer(model, recipe)
    config = deepspeed_config(recipe, layout, device, precision, stage)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                   dist_init_required=False)
    if weights_take_memory_format(config):
        # after DeepSpeed's start, whose broadcast views each weight as bytes (NCHW only); in place
        # (param.data), so the optimiser keeps the same parameters
        engine.module.to(memory_format=MEMORY_FORMAT)
    return engine, optimizer


def weights_take_memory_format(config: dict) -> bool:
    """Whether the weights can be laid out as MEMORY_FORMAT: not where DeepSpeed holds them as views
    of its flat buffers (ZeRO-1/2). There they stay NCHW; batches and activations are still NHWC,
    and the convolutions follow their input's layout."""
    return config["zero_optimization"]["stage"] == 0
