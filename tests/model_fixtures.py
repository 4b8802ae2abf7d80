"""Model helpers shared by the model and evaluation tests."""
from __future__ import annotations

import torch


def randomise_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm statistics and affine parameters far from identity, so that folding matters."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
