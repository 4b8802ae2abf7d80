"""UPerNet on HIRI-ViT (Section 5.3, Table 6): the Swin setup the paper follows (mmseg's
`upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.py`), with `transformers`' UPerNet heads.

Decode head: pyramid pooling at scales 1/2/3/6 on the last map, FPN fusion, 512 channels,
dropout 0.1 before the classifier (mmseg's decode heads; transformers' head has none, so the
classifier is wrapped). Auxiliary FCN head on the third map: one 3x3 conv of 256 channels,
dropout 0.1, loss weight 0.4 (the recipe's `aux_weight`). Both heads' BatchNorm becomes
SyncBatchNorm when several CUDA ranks train (mmseg's norm_cfg SyncBN).

Which stages: UPerNet fuses four maps. Stages 2-5 of the five (strides 8-64), as for the
detectors; docs/transfer.md shows which input and stages reproduce Table 6's parameters and
GFLOPs. Inputs must divide by the total stride, 64: `forward` pads at the bottom and right
and crops the logits back, so any size works.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

from .backbone import DenseBackbone, pad_to_multiple

NUM_CLASSES = 150
STAGES = (1, 2, 3, 4)
TOTAL_STRIDE = 64


def _with_dropout(classifier: nn.Conv2d, p: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(p), classifier)


class UPerNet(nn.Module):
    """Backbone + UPerNet decode head + auxiliary FCN head; logits at the input's size. `body`, if
    given, is any timm `features_only` model used in place of `arch`'s `stages` (the benchmark's
    baseline backbones, bench/transfer.py)."""

    def __init__(self, arch: str, num_classes: int = NUM_CLASSES, drop_path_rate: float = 0.0,
                 stages: tuple[int, ...] = STAGES, channels: int = 512, aux_channels: int = 256,
                 body: nn.Module | None = None):
        super().__init__()
        self.backbone = DenseBackbone(arch, stages, drop_path_rate) if body is None else body
        in_channels = self.backbone.feature_info.channels()
        config = UperNetConfig(num_labels=num_classes, hidden_size=channels, pool_scales=[1, 2, 3, 6],
                               use_auxiliary_head=True, auxiliary_channels=aux_channels, auxiliary_num_convs=1,
                               auxiliary_concat_input=False, auxiliary_in_channels=None)
        self.decode_head = UperNetHead(config, in_channels=in_channels)
        self.aux_head = UperNetFCNHead(config, in_channels=in_channels, in_index=2)
        self.decode_head.classifier = _with_dropout(self.decode_head.classifier)
        self.aux_head.classifier = _with_dropout(self.aux_head.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decode logits, auxiliary logits), both N x classes x H x W of the input."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, TOTAL_STRIDE)
        feats = self.backbone(x)
        outs = []
        for logits in (self.decode_head(feats), self.aux_head(feats)):
            # both heads predict at the first map's grid: upsample to the padded input, then crop
            logits = nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(logits[..., :h, :w])
        return outs[0], outs[1]
