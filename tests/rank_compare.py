"""Comparing N ranks with one process: a recipe whose result does not depend on the rank count,
and the check that two runs' student weights agree."""
from __future__ import annotations

import torch

# No mixing and no drop path (their draws are per rank), and no teacher target: the teacher's
# eval-mode BatchNorm statistics come from running stats, which 1 process updates once per
# micro-batch and 2 processes once per rank, then average. Micro-batches of 2 in both runs,
# so train-mode BatchNorm sees the same groups.
RANK_INVARIANT_RECIPE = dict(epochs=1, batch_size=4, micro_batch_size=2, zero_stage=2,
                             mix={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 0.0, "switch_prob": 0.5,
                                  "label_smoothing": 0.1},
                             ema={"decay": 0.9, "warmup": False, "alpha": 1.0})


def assert_students_match(one: dict, two: dict) -> None:
    """Every floating tensor of two student state dicts within float noise, BatchNorm running
    stats excepted (see RANK_INVARIANT_RECIPE)."""
    for k in one:
        if not one[k].is_floating_point() or "running_" in k:
            continue
        a, b = _without_key_bias(k, one[k].float()), _without_key_bias(k, two[k].float())
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{k}: max |diff| {(a - b).abs().max():.3g}"


def _without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """Drop attention key biases: softmax is shift-invariant, so their gradient is exactly zero in
    theory and pure float noise in practice, which AdamW's normalisation turns into lr-sized steps
    of random sign. No other parameter is excluded."""
    if name.endswith("qkv.bias"):
        d = t.numel() // 3
        return torch.cat([t[:d], t[2 * d:]])
    if name.endswith(".kv.bias"):
        return t[t.numel() // 2:]
    return t
