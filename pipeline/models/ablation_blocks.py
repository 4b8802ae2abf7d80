"""Blocks that only the ablations of Sections 5.4-5.7 need; HIRI-ViT's own blocks are in blocks.py.

Table 7 starts from a conventional four-stage M-ViT (Section 3, Fig. 2a) and changes one part per
row, so it needs the conventional parts HIRI-ViT replaced: the ViT-stem and Conv-stem (Section
4.1, Fig. 3a/b), the single strided-conv downsampling (Section 4.3, Fig. 5a), multi-head attention
with strided-conv spatial reduction of keys and values (Section 3, as in PVT [26], [40]), the plain
FFN of eq. (2), and LayerNorm where HIRI-ViT has BatchNorm (Section 4.4). Tensors between blocks
are NCHW, as in blocks.py.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath, LayerNorm2d
from torch import nn

from .blocks import CFFN, Attention, PointwiseFC, attention

NORMS = ("ln", "bn")


def norm2d(kind: str, dim: int) -> nn.Module:
    """LayerNorm over the channels of an NCHW map (M-ViT, Section 3) or BatchNorm (Section 4.4)."""
    if kind == "ln":
        return LayerNorm2d(dim, eps=1e-6)
    if kind == "bn":
        return nn.BatchNorm2d(dim)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvEmbed(nn.Module):
    """A strided conv + norm, PVTv2's overlapping patch embedding ([40]). Two uses in M-ViT:
    the ViT-stem (Section 4.1, Fig. 3a: "a single strided convolution layer (e.g., stride = 4,
    kernel size = 7 [40])") and the downsampling between stages (Section 4.3, Fig. 5a: "a single
    strided convolution (e.g., stride = 2, kernel size = 3 [40])") that enlarges the channels."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str = "ln"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2)
        self.norm = norm2d(norm, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def vit_stem(in_chans: int, out_chans: int, norm: str = "ln") -> ConvEmbed:
    return ConvEmbed(in_chans, out_chans, 7, 4, norm)


def conv_downsample(c_in: int, c_out: int, norm: str = "ln") -> ConvEmbed:
    return ConvEmbed(c_in, c_out, 3, 2, norm)


class ConvStem(nn.Module):
    """Conv-stem (Section 4.1, Fig. 3b), total stride 4: "several stacked 3x3 convolutions" [42].

    A stride-2 3x3 conv (the text: HR-stem "first utilizes a strided convolution (stride = 2,
    kernel size = 3) to downsample the input image as in Conv-stem"), two 3x3 convs at half
    resolution (each conv + BN + GELU), then a stride-2 3x3 projection to `out_chans` and a norm:
    the layout of the authors' Wave-ViT Conv-stem (YehLi/ImageNetModel, where the HR-stem widths
    32/64/64 also come from) with its 7x7 first conv made the 3x3 the text names. Table 7's rows
    5, 8 and 9 support it: docs/ablations.md ("Conv-stem").
    """

    def __init__(self, in_chans: int, width: int, out_chans: int, norm: str = "bn"):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
        )
        self.proj = nn.Conv2d(width, out_chans, 3, 2, 1)
        self.norm = norm2d(norm, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)))


class SRAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map downsampled by a strided
    conv (kernel = stride = `sr_ratio`) + LayerNorm: M-ViT's first two stages (Section 5.4: "a
    strided convolution as spatial reduction to downsample the keys and values"; PVT [26], [40]).
    Takes the normalised NCHW map, returns tokens (B, H*W, C)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        if sr_ratio < 2:
            raise ValueError(f"SRAttention needs sr_ratio >= 2 (use blocks.Attention without reduction), got {sr_ratio}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
        self.sr_norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        heads, d = self.num_heads, c // self.num_heads
        tokens = x.flatten(2).transpose(1, 2)
        q = self.q(tokens).reshape(b, -1, heads, d).transpose(1, 2)
        reduced = self.sr_norm(self.sr(x).flatten(2).transpose(1, 2))
        k, v = self.kv(reduced).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, -1, c))


class FFN(nn.Module):
    """Feed-forward network of eq. (2), FC(GELU(FC(X))) after a norm: M-ViT's (Table 7 row 1),
    before row 2 adds the depth-wise conv that makes it a CFFN."""

    def __init__(self, dim: int, mlp_ratio: float, norm: str = "ln"):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = norm2d(norm, dim)
        self.fc1 = PointwiseFC(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = PointwiseFC(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def feed_forward(dim: int, mlp_ratio: float, conv: bool, norm: str) -> nn.Module:
    """FFN (eq. 2) or CFFN (eq. 3, blocks.CFFN) with the given norm in front (CFFN's own is BN)."""
    if not conv:
        return FFN(dim, mlp_ratio, norm)
    ffn = CFFN(dim, mlp_ratio)
    if norm != "bn":
        ffn.norm = norm2d(norm, dim)  # Table 7 rows 2-3 keep M-ViT's LayerNorm (row 4 swaps it)
    return ffn


class MViTBlock(nn.Module):
    """M-ViT's pre-norm block (Section 3; Table 7 rows 1-3): x + MHA(LN(x)), then x + F(x), where F
    is the FFN of eq. (2) or the CFFN of eq. (3) with its own norm in front.

    `sr_ratio` > 1 reduces keys and values by a strided conv (M-ViT's first two stages); 1 attends
    over all tokens (blocks.Attention, as HIRI-ViT's stages 4-5). `attention=False` leaves only
    x + F(x) (row 3, "Remove MHA").
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int = 1,
        attention: bool = True,
        conv_ffn: bool = True,
        norm: str = "ln",
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.attention = attention
        if attention:
            self.norm1 = norm2d("ln", dim)
            self.attn = SRAttention(dim, num_heads, sr_ratio) if sr_ratio > 1 else Attention(dim, num_heads)
            self.reduces = sr_ratio > 1
        self.ffn = feed_forward(dim, mlp_ratio, conv_ffn, norm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention:
            b, c, h, w = x.shape
            y = self.norm1(x)
            tokens = self.attn(y) if self.reduces else self.attn(y.flatten(2).transpose(1, 2))
            x = x + self.drop_path(tokens.transpose(1, 2).reshape(b, c, h, w))
        return x + self.drop_path(self.ffn(x))
