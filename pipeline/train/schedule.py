"""Learning-rate schedule: linear warm-up then cosine decay, per optimiser step (Section 5.1:
"cosine decay learning rate scheduler and 5 epochs of linear warm-up"). timm's
CosineLRScheduler does the arithmetic; we step it by optimiser updates so that short runs and
resumed runs see the same curve."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from timm.scheduler import CosineLRScheduler

if TYPE_CHECKING:  # a type only: bench/gpu_smoke.py runs this on machines without pydantic
    from pipeline.config import RecipeParams


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: RecipeParams, steps_per_epoch: int,
                    base_lr: float) -> CosineLRScheduler:
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    for group in optimizer.param_groups:  # timm reads each group's initial_lr
        group["initial_lr"] = base_lr
        group["lr"] = base_lr
    return CosineLRScheduler(
        optimizer, t_initial=max(1, total - warmup), lr_min=recipe.min_lr, warmup_t=warmup,
        warmup_lr_init=recipe.warmup_lr, warmup_prefix=True,  # cosine over the steps after warm-up
        cycle_limit=1, t_in_epochs=False)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
