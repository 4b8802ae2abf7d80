"""HIRI-ViT building blocks, one class per block of the paper (Sections 3-4).

Tensors between blocks are NCHW. Stages 4-5 (Transformer blocks) flatten to tokens inside the
block and return NCHW, so every stage hands the next one the same layout.

Normalisation follows Section 4.4: BatchNorm in the convolutional parts (stem, HR blocks, IRDS,
every CFFN), LayerNorm only in front of multi-head attention (stages 4-5) and on the final
tokens. Every BatchNorm sits right after a conv, or right before the first linear layer of a
CFFN, so that `pipeline.models.deploy.fold_batchnorm` can merge all of them (the paper notes
that BN "can be merged into convolution operation to speedup inference").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, register_notrace_module
from torch import nn


class PointwiseFC(nn.Conv2d):
    """A fully connected layer applied to every token of an NCHW map (a 1x1 conv).

    The paper's "FC" layers (HR block, CFFN) run on maps; they are this class rather than a plain
    1x1 conv so that initialisation treats them as the FC layers they are (trunc-normal 0.02, as
    nn.Linear; HiriViT._init_weights), not as convolutions."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 1)


def repeat_2d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Each value of an NCHW map repeated over a factor x factor cell. Nearest-neighbour
    interpolation at an integer factor is exactly that, and torch's kernel keeps channels_last,
    where two `repeat_interleave`s return NCHW and their backward took 6-8x as long (bf16, the
    stage-1 map of HIRI-S@448 at batch 16)."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_tile" in f.read()
    except OSError:
        return False


# Measured on AVX512-BF16 CPUs without AMX only; AMX's bf16 tiles may change the comparison, so
# those CPUs keep the plain kernels until someone measures there (bench/cpu_bf16_kernels.py).
_ROUTE_CPU_BF16 = not _cpu_has_amx()


def _cpu_bf16_training(x: torch.Tensor) -> bool:
    """Whether `x` is computed for a backward on a CPU without AMX under bf16 autocast: where
    oneDNN's bf16 backward of two kernels is several times its fp32 one
    (`python bench/cpu_bf16_kernels.py`)."""
    return (_ROUTE_CPU_BF16 and torch.is_grad_enabled() and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def in_fp32(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn on fp32 copies of `tensors` with CPU autocast off, its result handed on in bf16: how the
    blocks below run the kernels whose bf16 backward is slow on the CPU."""
    with torch.autocast("cpu", enabled=False):
        return fn(*(t.float() for t in tensors)).to(torch.bfloat16)


@register_notrace_module  # its dtype choice stays out of FX graphs (timm's feature extraction)
class StridedDepthwiseConv2d(nn.Conv2d):
    """A strided depth-wise conv (HR block's low branch, IRDS-b) that, when training on the CPU
    under bf16 autocast, computes in fp32 and hands bf16 on.

    oneDNN's bf16 backward of a strided depth-wise conv is about 10x its fp32 backward on the CPU
    we train on (1920 channels at 14x14, batch 16: 87 ms against 4 ms), while its forward costs the
    same in either: at the main job's HIRI-S@448 batch 16 the four such convs took 0.2 s of a 2.5 s
    step. Elsewhere (GPUs, inference, fp32) it is a plain conv, with the same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_bf16_training(x):
            return in_fp32(super().forward, x)
        return super().forward(x)


@register_notrace_function  # as above
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, with torch's fused kernel. Training on the CPU under bf16
    autocast it runs in fp32: the bf16 backward of CPU flash attention is 1.5x (stage 4's 196
    tokens) to 4x (stage 5's 49) its fp32 one, for the same forward cost."""
    if _cpu_bf16_training(q):
        return in_fp32(F.scaled_dot_product_attention, q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, BN carries it) followed by BatchNorm."""
    conv = StridedDepthwiseConv2d if stride > 1 and groups == c_in == c_out > 1 else nn.Conv2d
    return nn.Sequential(
        conv(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


class HRStem(nn.Module):
    """High Resolution stem (Section 4.1, Fig. 3c): a stride-2 3x3 conv, then two parallel branches
    summed and batch-normalised.

    - high-resolution branch: light depth-wise 3x3 conv at the stem's full resolution, then a
      strided 3x3 conv;
    - low-resolution branch: a strided 3x3 conv first, then 3x3 and 1x1 convs at low resolution.

    `stride` is the stem's total stride: 4 (Table 1: "4 x 4") for inputs that divide by 64, 2 for
    the 224 model, whose stages then run at the grid sizes of the 448 model, as the paper's 224
    GFLOPs imply (docs/model.md, "Resolution variants").
    `width` is the channel count inside the stem; we use the stage-1 width C1 (docs/model.md).
    """

    def __init__(self, in_chans: int, width: int, out_chans: int, stride: int = 4):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"HRStem stride must be 2 or 4, got {stride}")
        branch_stride = stride // 2
        self.conv1 = nn.Sequential(conv_bn(in_chans, width, 3, stride=2), nn.GELU())
        self.high = nn.Sequential(
            conv_bn(width, width, 3, groups=width),
            nn.Conv2d(width, out_chans, 3, branch_stride, 1, bias=False),
        )
        self.low = nn.Sequential(
            conv_bn(width, width, 3, stride=2),
            nn.GELU(),
            conv_bn(width, width, 3),
            nn.GELU(),
            nn.Conv2d(width, out_chans, 1, bias=False),
        )
        # At total stride 4 the low branch (one stride-2 conv) lands on the high branch's grid;
        # at total stride 2 the high branch keeps the grid and the low branch is upsampled by
        # repetition, as the HR block does.
        self.low_upsample = 1 if branch_stride == 2 else 2
        self.norm = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        low = self.low(x)
        if self.low_upsample > 1:
            low = repeat_2d(low, self.low_upsample)
        return self.norm(self.high(x) + low)


class HRBlock(nn.Module):
    """High Resolution block (Section 4.2, Fig. 4), a residual two-branch block.

    - high-resolution branch: a light depth-wise 3x3 conv (+BN);
    - low-resolution branch: stride-2 depth-wise 3x3 conv + BN, then FC - GELU - FC (expansion
      `mlp_ratio`, Table 1's E1/E2) on the half-resolution map, upsampled by repetition;
    the two are summed and added to the input.
    """

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.high = conv_bn(dim, dim, 3, groups=dim)
        self.low_down = conv_bn(dim, dim, 3, stride=2, groups=dim)
        self.low_fc1 = PointwiseFC(dim, hidden)
        self.low_act = nn.GELU()
        self.low_fc2 = PointwiseFC(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        low = self.low_fc2(self.low_act(self.low_fc1(self.low_down(x))))
        # Upsampling by repetition; crop handles odd sizes (e.g. a 768 input's dense-task crops).
        low = repeat_2d(low, 2)[..., :h, :w]
        return x + self.drop_path(self.high(x) + low)


class IRDSA(nn.Module):
    """Inverted Residual Downsampling, variant a (Section 4.3, Fig. 5b), between stages 1-2 and 2-3.

    A strided 3x3 conv expands the channels (x `expansion` of the input width) while halving the
    resolution, a 1x1 conv shrinks them to the next stage's width; the extra downsampling shortcut
    is added to the result. The paper names the shortcut but not its form: we take ResNet-D's
    downsampling shortcut (2x2 average pooling, then a 1x1 conv to the new width), the cheapest form
    that changes both resolution and width; in IRDS-a it carries BN like every conv of stages 1-3.
    """

    def __init__(self, c_in: int, c_out: int, expansion: float):
        super().__init__()
        hidden = int(c_in * expansion)
        self.expand = nn.Sequential(conv_bn(c_in, hidden, 3, stride=2), nn.GELU())
        self.project = conv_bn(hidden, c_out, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), conv_bn(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.expand(x)) + self.shortcut(x)


class IRDSB(nn.Module):
    """Inverted Residual Downsampling, variant b (Section 4.3, Fig. 5c), between stages 3-4 and 4-5.

    An inverted residual block (1x1 expand, stride-2 depth-wise 3x3, 1x1 project) that applies
    normalisation and activation only after the first conv, plus the extra downsampling shortcut
    (2x2 average pooling + 1x1 conv, as in IRDS-a, but without a norm: "only after the first
    convolution"). That one norm is BatchNorm also in the IRDS-b between stages 4 and 5: Section 4.4
    gives LN to the last two stages' blocks (before attention), while IRDS is a convolutional layer,
    and BN there folds into the conv for inference like every other conv-BN pair (docs/model.md).
    """

    def __init__(self, c_in: int, c_out: int, expansion: float):
        super().__init__()
        hidden = int(c_in * expansion)
        self.expand = nn.Sequential(conv_bn(c_in, hidden, 1), nn.GELU())
        self.dw = StridedDepthwiseConv2d(hidden, hidden, 3, 2, 1, groups=hidden)
        self.project = nn.Conv2d(hidden, c_out, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.dw(self.expand(x))) + self.shortcut(x)


class CFFN(nn.Module):
    """Convolutional feed-forward network, eq. (3): FC(DWConv(z) + z), z = GELU(FC(X)).

    Works on NCHW maps with 1x1 convs as the FC layers (identical to per-token linears), preceded
    by BatchNorm as Section 4.4 prescribes for every CFFN.
    """

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = PointwiseFC(dim, hidden)
        self.act = nn.GELU()
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = PointwiseFC(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.act(self.fc1(self.norm(x)))
        return self.fc2(self.dw(z) + z)


class CFFNBlock(nn.Module):
    """Stage-3 block: a residual CFFN alone (Section 4.6, Table 8 row 4)."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.ffn = CFFN(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.ffn(x))


class Attention(nn.Module):
    """Multi-head self-attention, eq. (1), over all tokens (no spatial reduction in stages 4-5)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Stage-4/5 block: x + MHA(LN(x)), then x + CFFN(x) (the CFFN brings its own BN)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ffn = CFFN(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return x + self.drop_path(self.ffn(x))


class ClassAttention(nn.Module):
    """Attention of a class token over [class token, patch tokens] (CaiT-style)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [class token, patch tokens] (B, 1 + N, C) -> the class token's update (B, 1, C)."""
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(x[:, :1]).reshape(b, 1, heads, d).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, heads, d).permute(2, 0, 3, 1, 4)
        cls = attention(q, k, v)
        return self.proj(cls.transpose(1, 2).reshape(b, 1, c))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Every token as its own class token: x (B, N, C) -> (B, N, C). Token i queries
        [token i, token 1..N] exactly as the class token queries [class token, token 1..N], so
        its own key and value appear twice, as the pooled token's do when it equals a location."""
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(x).reshape(b, n, heads, d).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, heads, d).permute(2, 0, 3, 1, 4)
        scale = d**-0.5
        own = (q * k).sum(-1, keepdim=True) * scale  # (B, heads, N, 1): each query's own key
        attn = torch.cat([own, (q @ k.transpose(-2, -1)) * scale], dim=-1).softmax(dim=-1)
        out = attn[..., :1] * v + attn[..., 1:] @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ClassBlock(nn.Module):
    """Class-attention block that updates only the class token (the head of the authors' earlier
    Wave-ViT/Dual-ViT backbones, which this paper's parameter counts support: docs/model.md).

    `forward` refines the pooled class token; `dense` runs the same block with every location
    of the map in the class token's place: the head with its average pooling removed, which
    EMA distillation's teacher map needs (Section 4.5; docs/model.md argues this reading)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """cls (B, 1, C), tokens (B, N, C) -> the refined class token (B, 1, C)."""
        cls = cls + self.attn(self.norm1(torch.cat([cls, tokens], dim=1)))
        return cls + self.mlp(self.norm2(cls))

    def dense(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C) -> (B, N, C): each location refined as if it were the class token."""
        x = tokens + self.attn.dense(self.norm1(tokens))
        return x + self.mlp(self.norm2(x))
