"""The kernels HIRI-ViT's blocks route around when training on the CPU under bf16 autocast.

oneDNN's bf16 backward is several times its fp32 one for two kernels of the model (a strided
depth-wise conv and flash attention), and two `repeat_interleave`s (the HR blocks' upsampling)
cost several times the nearest-neighbour interpolation that computes the same map. Per kernel,
at the shapes HIRI-ViT-S meets at the main job's resolution and batch, forward and backward
milliseconds (the best of `--repeats`) for the plain choice and for ours
(pipeline/models/blocks.py: `StridedDepthwiseConv2d`, `attention`, `repeat_2d`); then the
whole training step (forward, backward) of the model with both, interleaved in rounds, median.

    python bench/cpu_bf16_kernels.py                  # hiri_vit_s at 448, batch 16
    python bench/cpu_bf16_kernels.py --img-size 224 --batch 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CL = torch.channels_last


def _fwd_bwd_ms(fn, inputs: list[torch.Tensor], repeats: int) -> tuple[float, float]:
    fwd, bwd = [], []
    for _ in range(repeats):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        t0 = time.perf_counter()
        out = fn(*leaves)
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    return 1e3 * min(fwd), 1e3 * min(bwd)


def kernel_cases(model, img_size: int, batch: int):
    """(name, plain fn, our fn, bf16 inputs) for every strided depth-wise conv, attention and
    upsampling shape of `model` at `img_size`, found by hooks on one forward."""
    from pipeline.models.blocks import Attention, ClassAttention, HRBlock, StridedDepthwiseConv2d, in_fp32

    seen, cases = set(), []

    def conv_hook(mod, inp, out):
        key = ("dw", mod.in_channels, tuple(inp[0].shape[-2:]))
        if key in seen:
            return
        seen.add(key)
        x = torch.randn(batch, *inp[0].shape[1:], dtype=torch.bfloat16).contiguous(memory_format=CL)
        w = mod.weight.detach().to(torch.bfloat16).contiguous(memory_format=CL)

        def conv(x, w, s=mod.stride, p=mod.padding, g=mod.groups):
            return F.conv2d(x, w, None, s, p, 1, g)
        h, wd = inp[0].shape[-2:]
        cases.append((f"strided dw conv {mod.in_channels} ch {h}x{wd}", conv, partial(in_fp32, conv), [x, w]))

    def attn_hook(mod, inp, out):
        b, n, c = inp[0].shape
        heads = mod.num_heads
        lq = 1 if isinstance(mod, ClassAttention) else n
        key = ("attn", lq, n, c)
        if key in seen:
            return
        seen.add(key)
        d = c // heads
        q = torch.randn(batch, heads, lq, d, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, heads, n, d, dtype=torch.bfloat16) for _ in range(2))
        sdpa = F.scaled_dot_product_attention
        cases.append((f"attention {heads} heads {lq}x{n} tokens", sdpa, partial(in_fp32, sdpa), [q, k, v]))

    def up_hook(mod, inp, out):  # the HR block's low branch: half its input's grid, upsampled back
        c, h, w = inp[0].shape[1:]
        key = ("up", c, h, w)
        if key in seen:
            return
        seen.add(key)
        x = torch.randn(batch, c, (h + 1) // 2, (w + 1) // 2, dtype=torch.bfloat16).contiguous(memory_format=CL)
        cases.append((f"2x upsampling {c} ch {x.shape[-2]}x{x.shape[-1]}",
                      lambda x: x.repeat_interleave(2, 2).repeat_interleave(2, 3),
                      lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), [x]))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, StridedDepthwiseConv2d)]
    hooks += [m.register_forward_hook(attn_hook) for m in model.modules() if isinstance(m, (Attention, ClassAttention))]
    hooks += [m.register_forward_hook(up_hook) for m in model.modules() if isinstance(m, HRBlock)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, img_size, img_size))
    for h in hooks:
        h.remove()
    return cases


def step_ms(model, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    return 1e3 * (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hiri_vit_s")
    ap.add_argument("--img-size", type=int, default=448)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="per kernel; the best is reported")
    ap.add_argument("--rounds", type=int, default=6, help="whole steps per variant, interleaved; median")
    args = ap.parse_args(argv)

    import timm

    import pipeline.models  # noqa: F401
    from pipeline.models import blocks

    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size, num_classes=10)
    print(f"{args.model}@{args.img_size}, batch {args.batch}, {torch.get_num_threads()} threads, bf16 inputs; "
          f"ms, best of {args.repeats}\n")
    print("| kernel | plain fwd | plain bwd | ours fwd | ours bwd | fwd+bwd ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, plain, ours, inputs in kernel_cases(model, args.img_size, args.batch):
        pf, pb = _fwd_bwd_ms(plain, inputs, args.repeats)
        of, ob = _fwd_bwd_ms(ours, inputs, args.repeats)
        print(f"| {name} | {pf:.1f} | {pb:.1f} | {of:.1f} | {ob:.1f} | {(pf + pb) / (of + ob):.2f}x |")

    # The whole step: ours, and the plain kernels (fp32 routing off; the upsampling stays ours).
    model.train().to(memory_format=CL)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size).contiguous(memory_format=CL)
    ours_check = blocks._cpu_bf16_training
    times = {"plain bf16 kernels": [], "ours": []}
    try:
        for r in range(args.rounds + 1):
            for name, check in (("plain bf16 kernels", lambda x: False), ("ours", ours_check)):
                blocks._cpu_bf16_training = check
                t = step_ms(model, x)
                if r:  # the first round warms oneDNN's kernels up
                    times[name].append(t)
    finally:
        blocks._cpu_bf16_training = ours_check
    plain, ours = (statistics.median(v) for v in times.values())
    print(f"\ntraining step (forward + backward, bf16 autocast), median of {args.rounds}: plain bf16 kernels "
          f"{plain:.0f} ms, ours {ours:.0f} ms: {plain / ours:.2f}x")


if __name__ == "__main__":
    main()
