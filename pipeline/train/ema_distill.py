"""EMA distillation, exactly as Section 4.5 of the paper.

The teacher F^t is the exponential moving average of the student (timm's `ModelEmaV3`). It sees
the *unmixed* batch with the final average pooling removed (`model.forward_dense`), giving a
class-probability map per location: P_a for x_a and, since timm's batch-mode mixing pairs each
image with the reversed batch, P_b = P_a.flip(0) for x_b. With the same mixing as the student's
input:

    CutMix:  P~ = M * P_a + (1 - M) * P_b      (M: the CutMix mask, resampled to the map)
    Mixup:   P~ = lam * P_a + (1 - lam) * P_b
    y^ = AvgPool(P~)                           (mean over the map's locations)
    y- = alpha * y~ + (1 - alpha) * y^         (y~: the CutMix/Mixup label, smoothing included)

and the student is trained on (x~, y-) with soft-target cross-entropy. The teacher never
receives a gradient: its parameters are frozen and its forward runs under `torch.no_grad()`.

Resampling M: M is 1 outside the pasted box (where x_a shows). Each map cell gets the fraction of
its input pixels where M = 1 (area interpolation), which is exact for the integer strides of the
HIRI-ViT maps (e.g. 448 -> 7x7 cells of 64x64 pixels) and makes y^ = lam P_a + (1-lam) P_b when
the maps are spatially constant, matching y~'s lambda.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from .mixing import MixInfo


def mask_on_map(info: MixInfo, img_hw: tuple[int, int], map_hw: tuple[int, int],
                device=None, dtype=torch.float32) -> torch.Tensor:
    """The CutMix mask M (1 = x_a) resampled to the teacher's map: shape (h, w), values in [0, 1]."""
    if info.kind != "cutmix" or info.box is None:
        raise ValueError(f"mask_on_map needs a cutmix MixInfo with a box, got {info}")
    y0, y1, x0, x1 = info.box
    mask = torch.ones(img_hw, device=device, dtype=dtype)
    mask[y0:y1, x0:x1] = 0.0
    return F.interpolate(mask[None, None], size=tuple(map_hw), mode="area")[0, 0]


def teacher_target(prob_map: torch.Tensor, info: MixInfo, img_hw: tuple[int, int]) -> torch.Tensor:
    """y^ = AvgPool(P~) from the teacher's per-location probabilities on the unmixed batch.

    prob_map: (B, K, h, w) probabilities of x_a (the batch as loaded); returns (B, K).
    """
    if prob_map.ndim != 4:
        raise ValueError(f"teacher probability map must be (B, K, h, w), got shape {tuple(prob_map.shape)}")
    p_a = prob_map
    if info.kind == "none":
        mixed = p_a
    elif info.kind == "mixup":
        mixed = info.lam * p_a + (1.0 - info.lam) * p_a.flip(0)
    elif info.kind == "cutmix":
        m = mask_on_map(info, img_hw, prob_map.shape[-2:], prob_map.device, prob_map.dtype)
        mixed = m * p_a + (1.0 - m) * p_a.flip(0)
    else:
        raise ValueError(f"unknown mix kind {info.kind!r}")
    return mixed.mean(dim=(2, 3))


def first_student_weight(decay: float, warmup: bool, step: int) -> float:
    """The teacher's weight, after its update at optimiser step `step`, on the first student it
    copied (timm's EMA applies decay 0 at the first update: the teacher starts as the student one
    step from its random initialisation). The product of the decays applied since: decay^(step-1),
    or with timm's warm-up ramp 1 - t^(-2/3) at update t, a product that falls below 1e-12 within
    about a thousand steps."""
    if step <= 1:
        return 1.0
    if not warmup:
        return decay ** (step - 1)
    weight = 1.0
    for t in range(2, step + 1):
        weight *= min(decay, 1.0 - t ** (-2.0 / 3.0))
        if weight < 1e-12:
            return 0.0
    return weight


def ramped_alpha(alpha: float, teacher_init_weight: float) -> float:
    """alpha_t = alpha + (1 - alpha) * w_t: the CutMix/Mixup label keeps the weight the teacher
    still owes to its near-random start (w_t, `first_student_weight`), so the target trusts the
    teacher only as far as it is an average of trained students (docs/training.md)."""
    return alpha + (1.0 - alpha) * teacher_init_weight


def distill_target(y_tilde: torch.Tensor, y_hat: torch.Tensor, alpha: float) -> torch.Tensor:
    """y- = alpha * y~ + (1 - alpha) * y^ (alpha = 1 switches distillation off)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EMA distillation alpha must be in [0, 1], got {alpha}")
    return alpha * y_tilde + (1.0 - alpha) * y_hat


class EmaTeacher:
    """The EMA teacher: a frozen moving average of the student that produces y^."""

    def __init__(self, student: nn.Module, decay: float, warmup: bool, alpha: float = 0.5, alpha_ramp: bool = False):
        # alpha 1 reads no teacher map (the loop skips the teacher's forward): any model trains so,
        # with its plain EMA kept and evaluated, as the timm backbones of Table 9 do
        if alpha < 1.0 and not hasattr(student, "forward_dense"):
            raise TypeError(f"{type(student).__name__} has no forward_dense(); EMA distillation (alpha {alpha} < 1) "
                            "needs the per-location logits of the last feature map: train it with alpha 1")
        # warmup: timm's decay ramp 1 - (1 + step)^-2/3, capped at `decay`; short runs would
        # otherwise keep a teacher that is still almost the random initialisation.
        self.ema = ModelEmaV3(student, decay=decay, use_warmup=warmup)
        for p in self.ema.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.alpha, self.alpha_ramp = decay, warmup, alpha, alpha_ramp

    def alpha_at(self, step: int) -> float:
        """alpha for the target of the step after optimiser step `step` (the teacher's last update)."""
        if not self.alpha_ramp:
            return self.alpha
        return ramped_alpha(self.alpha, first_student_weight(self.decay, self.warmup, step))

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, student: nn.Module, step: int) -> None:
        self.ema.update(student, step=step)

    @torch.no_grad()
    def prob_map(self, x: torch.Tensor) -> torch.Tensor:
        self.module.eval()
        return self.module.forward_dense(x).float().softmax(dim=1)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def schedule_table(decay: float, steps_per_epoch: int, alpha: float,
                   epochs=(1, 2, 5, 10, 20, 30, 50, 100, 200, 300)) -> str:
    """Markdown: over epochs, the teacher's weight on its near-random start without warm-up, the
    ramped alpha, and timm's warm-up alternative (its decay and averaging window at that epoch)."""
    rows = ["| epoch | step | w_t, no warm-up | alpha_t (ramp) | timm warm-up: decay | window (epochs) | "
            "w_t, timm warm-up |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for epoch in epochs:
        step = epoch * steps_per_epoch
        w = first_student_weight(decay, False, step)
        warm_decay = min(decay, 1.0 - step ** (-2.0 / 3.0))
        rows.append(f"| {epoch} | {step} | {w:.3f} | {ramped_alpha(alpha, w):.3f} | {warm_decay:.6f} | "
                    f"{1.0 / (1.0 - warm_decay) / steps_per_epoch:.2f} | {first_student_weight(decay, True, step):.1g} |")
    return "\n".join(rows)


if __name__ == "__main__":
    # The numbers behind the paper profile's EMA choice (docs/training.md): python -m pipeline.train.ema_distill
    import math

    from pipeline.config import load_params

    recipe = load_params().train.recipe("paper")
    steps = 1_281_167 // recipe.batch_size  # ImageNet-1K train images per global batch (last one dropped)
    print(f"EMA decay {recipe.ema.decay}, {steps} steps per epoch (ImageNet-1K at global batch "
          f"{recipe.batch_size}), alpha {recipe.ema.alpha}; averaging window without warm-up: "
          f"{1.0 / (1.0 - recipe.ema.decay) / steps:.1f} epochs\n")
    print(schedule_table(recipe.ema.decay, steps, recipe.ema.alpha))
