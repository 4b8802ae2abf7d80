"""Deploy mode: fold every BatchNorm of a HIRI-ViT into a neighbouring conv for inference.

Section 4.4 chooses BN over LN in the convolutional parts because "BN can also be merged into
convolution operation to speedup inference". In our blocks each BN is in one of three places:

- right after a conv (`conv_bn`): folded into that conv (torch's `fuse_conv_bn_eval`);
- after the sum of the HR-stem's two branches: BN is affine, so it folds into the last conv of
  each branch (scale both, add the shift once);
- in front of a CFFN's first 1x1 conv (the pre-norm): folded into that 1x1 conv.

After folding the model holds no BatchNorm and computes the same function (eval mode). Other
models (the timm baselines bench/throughput.py sets beside ours) fold by torch.fx's conv-BN fusion.

Two residual identities fold the same way, into the centre tap of a depthwise 3x3 kernel
(`fold_identities`, RepVGG's reparameterisation): the CFFN's DWConv(z) + z (eq. 3) and the HR
block's x + DWConv(x) (Fig. 4, its high-resolution branch plus the shortcut). Each saves a pass
over the block's largest map.

`inference_model` is what a user deploys and what the `throughput` metric and bench/throughput.py
time: BatchNorm and identities folded, channels_last weights, optionally torch.compile.
"""
from __future__ import annotations

import copy

import torch
from timm.models import reparameterize_model
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse_conv_bn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import CFFN, HRBlock, HRStem, repeat_2d


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(x) = scale * x + shift, per channel (eval mode)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _scale_conv_out(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias * scale if conv.bias is not None else torch.zeros_like(scale)
    if shift is not None:
        bias = bias + shift
    conv.bias = nn.Parameter(bias)


def _fold_into_next_1x1(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """conv(BN(x)) for a 1x1 conv: W' = W * scale (per input channel), b' = b + W @ shift."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("a BN before a conv folds exactly only into an ungrouped 1x1 conv")
    scale, shift = _bn_affine(bn)
    w = conv.weight
    bias = conv.bias if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    conv.bias = nn.Parameter(bias + w[:, :, 0, 0] @ shift)
    conv.weight.mul_(scale.view(1, -1, 1, 1))


def _fold_sequential(seq: nn.Sequential) -> None:
    children = list(seq.children())
    for i in range(len(children) - 1):
        conv, bn = children[i], children[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm):
            seq[i] = fuse_conv_bn_eval(conv, bn)
            seq[i + 1] = nn.Identity()


def _batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` (a copy unless `inplace`) in eval mode with every BatchNorm folded away.

    HIRI-ViT's three places are folded in its own modules (the result is still a HiriViT, with
    every timm method); a model whose BatchNorms are elsewhere (a timm ResNet) is traced by torch.fx
    and its conv-BN pairs fused, which returns a GraphModule."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        elif isinstance(module, CFFN) and isinstance(module.norm, _BatchNorm):
            _fold_into_next_1x1(module.norm, module.fc1)
            module.norm = nn.Identity()
        elif isinstance(module, HRStem) and isinstance(module.norm, _BatchNorm):
            scale, shift = _bn_affine(module.norm)
            _scale_conv_out(module.high[-1], scale, shift)
            _scale_conv_out(module.low[-1], scale, None)
            module.norm = nn.Identity()
    if _batchnorms(model):
        model = fx_fuse_conv_bn(model, inplace=True)  # only conv -> BN pairs of the traced graph
    left = _batchnorms(model)
    if left:
        raise RuntimeError(f"BatchNorm layers left unfolded: {left}")
    return model


def _add_identity(conv: nn.Conv2d) -> None:
    """conv(x) + x as one depthwise conv: +1 on each channel's centre tap."""
    k = conv.kernel_size[0]
    if not (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k) and k % 2
            and conv.stride == (1, 1) and conv.padding == (k // 2, k // 2)):
        raise ValueError(f"an identity folds only into a stride-1 'same' depthwise conv with an odd square kernel, "
                         f"not {conv}")
    conv.weight[:, 0, k // 2, k // 2] += 1.0


class _FoldedCFFN(CFFN):
    """A CFFN whose DWConv carries the shortcut: FC(DWConv'(z)), z = GELU(FC(X))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dw(self.act(self.fc1(self.norm(x)))))


class _FoldedHRBlock(HRBlock):
    """An HR block whose high-resolution branch carries the shortcut: DWConv'(x) + Up(low)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        low = self.low_fc2(self.low_act(self.low_fc1(self.low_down(x))))
        out = self.high(x)
        if h % 2 or w % 2:  # an odd map: upsample and crop, as HRBlock does
            return out + repeat_2d(low, 2)[..., :h, :w]
        # each low-resolution value added to its 2x2 cell in place: the repetition never materialised
        out.unflatten(2, (h // 2, 2)).unflatten(4, (w // 2, 2)).add_(low[:, :, :, None, :, None])
        return out


@torch.no_grad()
def fold_identities(model: nn.Module) -> nn.Module:
    """Fold the shortcuts of every CFFN and HR block into their depthwise kernels, in place; `model`
    must be in eval mode with its BatchNorms folded (a training-mode HR block drops its path)."""
    if model.training or _batchnorms(model):
        raise ValueError("fold_identities needs an eval-mode model with BatchNorm folded (fold_batchnorm first)")
    for module in model.modules():
        if type(module) is CFFN and isinstance(module.norm, nn.Identity):
            _add_identity(module.dw)
            module.__class__ = _FoldedCFFN  # same parameters and state-dict keys, the shortcut-free forward
        elif type(module) is HRBlock:
            _add_identity(module.high[0])
            module.__class__ = _FoldedHRBlock
    return model


def inference_model(model: nn.Module, channels_last: bool = True, compile: bool = False) -> nn.Module:
    """A copy of `model` as one would deploy it: eval mode; timm's own reparameterisation (the
    `reparameterize()` of RepVGG-style baselines such as FastViT and MobileOne); BatchNorm and
    identities folded; weights in channels_last (oneDNN's and cuDNN's fast convolution, BatchNorm
    and elementwise kernels are NHWC ones; HIRI-ViT's high-resolution stages are mostly such
    kernels); and, if asked, torch.compile'd. Feed it channels_last batches
    (pipeline.train.evaluate.timed_forward does)."""
    model = reparameterize_model(model).eval()  # a copy: the caller's model keeps its mode
    model = fold_identities(fold_batchnorm(model, inplace=True))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model
