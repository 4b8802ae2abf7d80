"""GFLOPs as multiply-adds with fvcore's FlopCountAnalysis (the convention of the paper's tables).

fvcore skips operators it has no handle for; `scaled_dot_product_attention` is one of them, and
it carries the attention products QK^T and AV. We register a handle for it (and for the few
other ops our models or the timm baselines emit), and `count_gflops` fails loudly if any op that
does arithmetic is still skipped, so a silent undercount cannot slip into docs/model.md.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from math import prod

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

# Ops that do no multiply-adds (or a negligible, conventionally ignored amount): skipping is right.
_NO_MACS = {
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::sub", "aten::div", "aten::gelu",
    "aten::relu", "aten::relu_", "aten::silu", "aten::silu_", "aten::sigmoid", "aten::softmax",
    "aten::mean", "aten::sum", "aten::max", "aten::max_pool2d", "aten::avg_pool2d", "aten::cat",
    "aten::repeat_interleave", "aten::hardtanh_", "aten::hardswish_", "aten::rsub", "aten::neg",
    "aten::clone", "aten::roll", "aten::pad", "aten::constant_pad_nd", "aten::fill_", "aten::expand_as",
    "aten::new_zeros", "aten::zeros", "aten::ones", "aten::masked_fill", "aten::eq", "aten::ne",
    "aten::index", "aten::topk", "aten::scatter_", "aten::mul_", "aten::exp", "aten::sqrt",
    "aten::pow", "aten::rsqrt", "aten::linalg_vector_norm", "aten::clamp", "aten::clamp_min",
    "aten::floor_divide", "aten::remainder", "aten::arange", "aten::unsqueeze", "aten::squeeze",
    "aten::dropout", "aten::feature_dropout", "aten::scalar_tensor", "aten::where", "aten::stack", "aten::lt", "aten::gt",
    "aten::ge", "aten::le", "aten::div_", "aten::abs", "aten::tanh", "aten::erf", "aten::log",
}


def _sdpa_flop(inputs, outputs) -> int:
    """MACs of softmax(QK^T)V: B*heads*(Lq*Lk*d) for QK^T plus B*heads*(Lq*Lk*dv) for AV."""
    q_shape = inputs[0].type().sizes()
    k_shape = inputs[1].type().sizes()
    v_shape = inputs[2].type().sizes()
    batch = prod(q_shape[:-2])
    lq, d = q_shape[-2:]
    lk = k_shape[-2]
    dv = v_shape[-1]
    return batch * lq * lk * (d + dv)


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flop,
    # the HR blocks' upsampling by repetition (blocks.repeat_2d): fvcore's own handle counts one
    # per output element of a nearest upsample (a None handle would not replace it), but a
    # repetition does no multiply-adds
    "aten::upsample_nearest2d": lambda inputs, outputs: 0,
}


@contextmanager
def eval_mode(model: nn.Module):
    """Count in eval mode (no drop-path, BN with running stats), then hand the model back in the
    mode it came in: a count taken mid-training must not switch training off."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def flop_analysis(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3,
                  handles: dict | None = None) -> FlopCountAnalysis:
    """fvcore's analysis of one image, `img_size` a side or (H, W); it traces lazily, so query it
    inside `eval_mode(model)`. `handles` adds op handles to ours (None for an op that does no
    multiply-adds), e.g. the detectors' roi_align (pipeline/transfer/counts.py)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.zeros(1, in_chans, h, w)
    analysis = FlopCountAnalysis(model, x).set_op_handle(**{**EXTRA_HANDLES, **(handles or {})})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def checked_analysis(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3,
                     handles: dict | None = None) -> FlopCountAnalysis:
    """`flop_analysis`, traced now (eval mode, no grad) and refused if any op that does arithmetic
    was skipped; its total(), by_module() and by_operator() are then cached, one trace for all."""
    with torch.no_grad(), eval_mode(model):
        analysis = flop_analysis(model, img_size, in_chans, handles)
        analysis.total()
        skipped = Counter(analysis.unsupported_ops())
    unknown = {op: n for op, n in skipped.items() if op not in _NO_MACS}
    if unknown:
        raise RuntimeError(f"fvcore has no FLOP handle for {sorted(unknown)}; add one in {__name__}")
    return analysis


def count_gflops(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> float:
    """Multiply-adds of one image, in G (1e9), with every arithmetic op accounted for."""
    return checked_analysis(model, img_size, in_chans).total() / 1e9


def attention_gflops(model: nn.Module, img_size: int) -> float:
    """The share of the count that the attention products (our sdpa handle) contribute."""
    with torch.no_grad(), eval_mode(model):
        by_op = flop_analysis(model, img_size).by_operator()
    return by_op.get("scaled_dot_product_attention", 0) / 1e9


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fmt_diff(ours: float, paper: float) -> str:
    """Ours against the paper's value, in percent, signed."""
    return f"{100 * (ours / paper - 1):+.1f}%"
