"""Inference throughput of HIRI-ViT S/B/L (plain and BN-folded) against timm baselines.

All models random-initialised, eval mode, the same batch size, thread count and process; every
model is warmed up, then timed once per round over several rounds (models interleaved) and its
median reported. Prints a markdown
table with GFLOPs (fvcore multiply-adds), images/s and the ratio to PVTv2-B2.

    python bench/throughput.py                    # this machine's CPU, the README table
    python bench/throughput.py --device cuda --batch-size 64 --amp   # a GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm  # noqa: E402

import pipeline.models  # noqa: E402,F401  (registers hiri_vit_*)
from pipeline.models.deploy import fold_batchnorm  # noqa: E402
from pipeline.models.flops import count_gflops  # noqa: E402
from pipeline.train.evaluate import timed_forward  # noqa: E402

HIRI = [(f"hiri_vit_{s}", r) for s in "sbl" for r in (224, 384, 448)]
BASELINES = [("pvt_v2_b2", 224), ("swin_tiny_patch4_window7_224", 224), ("convnext_tiny", 224), ("resnet50", 224)]
REFERENCE = "pvt_v2_b2"


def measure_interleaved(steps: dict, batch: int, warmup: int, repeats: int) -> dict:
    """Median images/s per model. Rounds interleave the models (each round times every model
    once), so a passing load on the machine hits all models alike instead of one model's run."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in steps}
    for r in range(repeats):
        for key, step in steps.items():
            times[key].append(step())
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {key: batch / statistics.median(t) for key, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--only", nargs="*", help="model names to run (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows, steps = [], {}
    for name, res in BASELINES[:1] + HIRI + BASELINES[1:]:
        if args.only and name not in args.only and name != REFERENCE:
            continue
        kwargs = {"img_size": res} if name.startswith("hiri") else {}
        model = timm.create_model(name, **kwargs)
        gflops = count_gflops(model, res)
        variants = [("", model)]
        if name.startswith("hiri"):
            variants.append((" (folded)", fold_batchnorm(model)))
        for suffix, m in variants:
            key = (name + suffix, res)
            rows.append((*key, gflops))
            steps[key] = timed_forward(m, res, args.batch_size, torch.device(args.device),
                                       "bf16" if args.amp else "fp32")
        print(f"  built {name} @ {res}", file=sys.stderr, flush=True)
    ips = measure_interleaved(steps, args.batch_size, args.warmup, args.repeats)
    runs = [(name, res, gflops, ips[(name, res)]) for name, res, gflops in rows]

    ref = next(ips for name, _, _, ips in runs if name == REFERENCE)
    device = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    print(f"\nInference throughput ({device}, batch {args.batch_size}, median of {args.repeats} interleaved rounds "
          f"after {args.warmup} warm-up{', bf16' if args.amp else ', fp32'}; torch {torch.__version__})\n")
    print("| model | res | GFLOPs | img/s | ratio to pvt_v2_b2 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, res, gflops, ips in runs:
        print(f"| {name} | {res} | {gflops:.2f} | {ips:.1f} | {ips / ref:.2f} |")


if __name__ == "__main__":
    main()
