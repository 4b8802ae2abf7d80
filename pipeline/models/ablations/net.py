"""A staged backbone general enough for every Table 7 and Table 8 row: four or five stages, any
stem, any downsampling per transition and any block kind per stage, with HIRI-ViT's head.

HIRI-ViT (hiri_vit.py) is the five-stage special case; the ablations vary what it fixes. StagedNet
subclasses HiriViT and replaces only the constructor; with Table 1's S configuration it builds
hiri_vit_s's exact parameter count and multiply-adds (tests/test_ablations.py checks it), so
HiriViT's constructor could later build from these specs too.

Head: HiriViT's (class token = average pool of the last map, one class-attention block,
LayerNorm, linear classifier; docs/model.md "Head"). The ablation rows are HIRI-ViT-S's own
path (Section 5.4 builds row 11 from row 1), so every row keeps that head and IRDS expansions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..ablation_blocks import ConvStem, MViTBlock, conv_downsample, vit_stem
from ..blocks import CFFNBlock, ClassBlock, HRBlock, HRStem, IRDSA, IRDSB, TransformerBlock
from ..hiri_vit import CLS_MLP_RATIO, IRDS_A_EXPANSION, IRDS_B_EXPANSION, HiriViT, _check_pool, square_side

BLOCKS = ("hr", "cffn", "t", "mvit")
STEMS = ("vit", "conv", "hr")
DOWNSAMPLES = ("conv-ln", "conv-bn", "irds-a", "irds-b")
STEM_STRIDE = 4  # every stem here has total stride 4 (Section 4.1; Table 1's "4 x 4")


@dataclass(frozen=True)
class StageSpec:
    """One stage: block kind, width C_i, depth, FFN expansion E_i; heads for attention blocks.

    Block kinds: "hr" (HR block, 4.2), "cffn" (residual CFFN, BN), "t" (HIRI-ViT's Transformer
    block: LN + MHA, BN-CFFN), "mvit" (M-ViT's pre-norm block of Table 7 rows 1-3, configured by
    `sr_ratio`, `attention`, `conv_ffn`, `norm`).
    """

    block: str
    width: int
    depth: int
    mlp_ratio: float
    heads: int = 0
    sr_ratio: int = 1
    attention: bool = True
    conv_ffn: bool = True
    norm: str = "bn"

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        needs_heads = self.block == "t" or (self.block == "mvit" and self.attention)
        if needs_heads and self.heads < 1:
            raise ValueError(f"a {self.block!r} stage with attention needs heads >= 1, got {self.heads}")
        if self.depth < 1:
            raise ValueError(f"stage depth must be >= 1, got {self.depth}")

    def build(self, drop_paths: Sequence[float]) -> nn.Sequential:
        c, r = self.width, self.mlp_ratio
        if self.block == "hr":
            blocks = [HRBlock(c, r, p) for p in drop_paths]
        elif self.block == "cffn":
            blocks = [CFFNBlock(c, r, p) for p in drop_paths]
        elif self.block == "t":
            blocks = [TransformerBlock(c, self.heads, r, p) for p in drop_paths]
        else:
            blocks = [
                MViTBlock(c, self.heads, r, self.sr_ratio, self.attention, self.conv_ffn, self.norm, p)
                for p in drop_paths
            ]
        return nn.Sequential(*blocks)


def make_stem(kind: str, in_chans: int, width: int, out_chans: int, norm: str) -> nn.Module:
    if kind == "vit":
        return vit_stem(in_chans, out_chans, norm)
    if kind == "conv":
        return ConvStem(in_chans, width, out_chans, norm)
    if kind == "hr":
        return HRStem(in_chans, width, out_chans, stride=STEM_STRIDE)
    raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")


def make_downsample(kind: str, c_in: int, c_out: int) -> nn.Module:
    if kind == "conv-ln":
        return conv_downsample(c_in, c_out, "ln")
    if kind == "conv-bn":
        return conv_downsample(c_in, c_out, "bn")
    if kind == "irds-a":
        return IRDSA(c_in, c_out, IRDS_A_EXPANSION)
    if kind == "irds-b":
        return IRDSB(c_in, c_out, IRDS_B_EXPANSION)
    raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {kind!r}")


class StagedNet(HiriViT):
    """Stem (stride 4) -> stage 1 -> downsample -> stage 2 -> ... -> HIRI-ViT's class-attention head.

    Only the constructor differs from HiriViT: it builds the stem, downsamplings and stages from
    specs instead of Table 1's fixed layout, and sets the attributes HiriViT's methods read
    (forward_features / forward_head / forward_dense / forward_intermediates / grad checkpointing
    / group_matcher / reset_classifier / the stem stride kept in the state dict), which it inherits.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec],
        downsamples: Sequence[str],
        stem: str = "hr",
        stem_width: int = 32,
        stem_norm: str = "bn",
        img_size: int | Sequence[int] = 448,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        nn.Module.__init__(self)  # HiriViT.__init__ would build Table 1's layout
        stages = tuple(stages)
        if len(downsamples) != len(stages) - 1:
            raise ValueError(f"{len(stages)} stages need {len(stages) - 1} downsamples, got {list(downsamples)}")
        self.img_size = square_side(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = _check_pool(global_pool, num_classes)
        self.stem_stride = STEM_STRIDE
        self.total_stride = STEM_STRIDE * 2 ** (len(stages) - 1)
        if self.img_size % self.total_stride:
            raise ValueError(
                f"img_size={self.img_size} is not a multiple of the total stride {self.total_stride} "
                f"(stem stride {STEM_STRIDE} x 2^{len(stages) - 1})"
            )
        widths = [s.width for s in stages]
        self.widths = tuple(widths)
        self.num_features = self.head_hidden_size = widths[-1]
        self.grad_checkpointing = False

        depths = [s.depth for s in stages]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stem = make_stem(stem, in_chans, stem_width, widths[0], stem_norm)
        self.downsamples = nn.ModuleList(
            [nn.Identity()] + [make_downsample(k, widths[i], widths[i + 1]) for i, k in enumerate(downsamples)]
        )
        self.stages = nn.ModuleList(
            [s.build(dpr[sum(depths[:i]) : sum(depths[: i + 1])]) for i, s in enumerate(stages)]
        )
        self.feature_info = [
            dict(num_chs=w, reduction=STEM_STRIDE * 2**i, module=f"stages.{i}") for i, w in enumerate(widths)
        ]
        self.cls_block = ClassBlock(widths[-1], stages[-1].heads or 1, CLS_MLP_RATIO)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
