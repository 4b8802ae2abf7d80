"""Where an inference forward spends its time: torch profiler, per operator, on the fast path.

    python bench/forward_profile.py                              # HIRI-ViT-S@448 and PVTv2-B2@224, fp32
    python bench/forward_profile.py --precision bf16 --top 12
    python bench/forward_profile.py --only hiri_vit_s@448 --by-shape   # the convolutions by shape

Each model is deployed as bench/throughput.py's `fast` path times it (BatchNorm folded,
channels_last) and run under the profiler for a few forwards of random input after warm-up. The
table gives each operator's share of the model's own (self) CPU time, its calls per forward and
the milliseconds per forward, so the operator mix of two models can be compared side by side.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.throughput import create, on_path, parse_only  # noqa: E402  (registers hiri_vit_*)
from pipeline.train.evaluate import autocast  # noqa: E402


def operator_table(name: str, res: int, batch: int, precision: str, forwards: int, top: int, by_shape: bool) -> str:
    model, layout = on_path(create(name, res), "fast")
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=layout)
    device = torch.device("cpu")
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
            for _ in range(forwards):
                model(x)
    events = prof.key_averages(group_by_input_shape=by_shape)
    total = sum(e.self_cpu_time_total for e in events)
    if by_shape:
        events = [e for e in events if e.key == "aten::mkldnn_convolution"]
    lines = [f"\n{name}@{res}, {precision}, batch {batch}: {total / forwards / 1e3:.0f} ms of operator time per forward\n",
             "| operator | input, weight shapes | share | calls per forward | ms per forward |" if by_shape else
             "| operator | share | calls per forward | ms per forward |",
             "| --- | --- | ---: | ---: | ---: |" if by_shape else "| --- | ---: | ---: | ---: |"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        shapes = f" {e.input_shapes[:2]} |" if by_shape else ""
        lines.append(f"| {e.key} |{shapes} {e.self_cpu_time_total / total * 100:.1f} % | {e.count // forwards} | "
                     f"{e.self_cpu_time_total / forwards / 1e3:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=["hiri_vit_s@448"],
                    help="models, `name` or `name@res`; PVTv2-B2@224 is always profiled too")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--forwards", type=int, default=3)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--by-shape", action="store_true", help="the convolutions, one row per input shape")
    args = ap.parse_args(argv)
    for name, res in parse_only(args.only):
        print(operator_table(name, res, args.batch_size, args.precision, args.forwards, args.top, args.by_shape),
              flush=True)


if __name__ == "__main__":
    main()
