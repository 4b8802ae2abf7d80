"""timm's Mixup/CutMix, with the mixing it drew made visible.

EMA distillation (Section 4.5) needs the *same* CutMix box M (or Mixup lambda) that produced the
student's input, to mix the teacher's probability maps. timm's `Mixup` draws and applies the box
inside `_mix_batch` and only returns lambda, so this subclass re-implements that one method with
timm's own helpers (same random draws, same order, same result) and records what it drew.

Conventions (timm's, batch mode): x_a is the batch itself and x_b is the batch reversed
(`x.flip(0)`); CutMix pastes x_b inside the box, so the paper's mask M is 1 *outside* the box,
and lambda = sum(M) / (H W) after timm's border correction. Mixup is x = lambda x_a + (1-lambda) x_b.

Seeding: timm draws lambda and the box from NumPy's global generator. The training loop seeds it
per (seed, epoch, rank) at each epoch start and restores the checkpointed state at a mid-epoch
resume, and the data loaders never draw from it (pipeline.data.seeding), so the draws of step s
are a function of (seed, epoch, s) on either loader backend, whatever its worker count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data.mixup import Mixup, cutmix_bbox_and_lam, mixup_target


@dataclass(frozen=True)
class MixInfo:
    """What one call mixed. kind is "none", "mixup" or "cutmix"; box is (y0, y1, x0, x1) in
    input pixels (half-open) for cutmix, None otherwise."""

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None


NO_MIX = MixInfo("none", 1.0)


class RecordingMixup(Mixup):
    """`timm.data.Mixup` in batch mode whose call returns (x, soft_target, MixInfo)."""

    def __init__(self, **kwargs):
        mode = kwargs.get("mode", "batch")
        if mode != "batch":
            # Section 4.5 mixes two teacher maps with one mask M per pair x_a / x_b; per-element
            # masks would need a box per sample. Only timm's batch mode is supported.
            raise ValueError(f"EMA distillation supports mixup mode 'batch' only, got mode={mode!r}")
        super().__init__(**kwargs)

    def _mix_batch_recorded(self, x: torch.Tensor) -> MixInfo:
        # Same draws and same in-place mixing as timm's Mixup._mix_batch.
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return NO_MIX
        if use_cutmix:
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                x.shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam
            )
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            return MixInfo("cutmix", float(lam), (int(yl), int(yh), int(xl), int(xh)))
        x_flipped = x.flip(0).mul_(1.0 - lam)
        x.mul_(lam).add_(x_flipped)
        return MixInfo("mixup", float(lam))

    def __call__(self, x: torch.Tensor, target: torch.Tensor):
        if len(x) % 2 != 0:
            raise ValueError(f"Mixup/CutMix needs an even batch size per rank, got {len(x)}")
        info = self._mix_batch_recorded(x)
        soft = mixup_target(target, self.num_classes, info.lam, self.label_smoothing)
        return x, soft, info
