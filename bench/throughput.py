"""Inference throughput of HIRI-ViT S/B/L against timm baselines, each model as one would run it.

Every model (random-initialised, eval mode) is timed on each path asked for:

  plain     as built: NCHW, BatchNorm unfolded, eager
  fast      as deployed (pipeline.models.deploy.inference_model): BatchNorm folded, channels_last
  compiled  the fast path under torch.compile (--compile; minutes of compilation on a small CPU)

at each precision asked for: fp32, and bf16 autocast where the device computes bf16 natively
(pipeline.train.evaluate.bf16_native). Same batch, threads and process for every model; each
round times every (model, path, precision) once, so a passing load on the machine hits them
alike, and each cell is the median over rounds. Ratios compare a model with PVTv2-B2@224 on the
same path and precision: on `fast`, each model on its own fast path (Table 2's throughput column
compared fairly). GMACs: fvcore's multiply-adds (bench/macs.py).

    python bench/throughput.py                                 # this machine's CPU, the README table
    python bench/throughput.py --only hiri_vit_s@448 --compile # PVTv2-B2 is always timed too
    python bench/throughput.py --only hiri_vit_s@448 --processes 5   # the spread between processes
    python bench/throughput.py --device cuda --batch-size 64   # a GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm  # noqa: E402

import pipeline.models  # noqa: E402,F401  (registers hiri_vit_*)
from bench.macs import gmacs  # noqa: E402
from pipeline.models.deploy import inference_model  # noqa: E402
from pipeline.train.evaluate import bf16_native, timed_forward  # noqa: E402

HIRI = [(f"hiri_vit_{s}", r) for s in "sbl" for r in (224, 384, 448)]
BASELINES = [("pvt_v2_b2", 224), ("swin_tiny_patch4_window7_224", 224), ("convnext_tiny", 224), ("resnet50", 224)]
REFERENCE = ("pvt_v2_b2", 224)
PATHS = ("plain", "fast", "compiled")


@dataclass
class Timed:
    """One model's images/s per (path, precision)."""

    name: str
    res: int
    gmacs: float | None
    ips: dict  # (path, precision) -> images/s


def create(name: str, res: int) -> torch.nn.Module:
    """A random-initialised timm model at `res` (HIRI-ViT takes the resolution it is built for)."""
    return timm.create_model(name, **({"img_size": res} if name.startswith("hiri") else {}))


def on_path(model: torch.nn.Module, path: str) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model prepared for `path`, and the layout its batches take."""
    if path == "plain":
        return model.eval(), torch.contiguous_format
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: one of {PATHS}")
    return inference_model(model, compile=path == "compiled"), torch.channels_last


def measure_interleaved(steps: dict, batch: int, warmup: int, repeats: int) -> dict:
    """Median images/s per key. Rounds interleave the keys (each round times every step once), so
    a passing load on the machine hits all of them alike instead of one model's run."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in steps}
    for r in range(repeats):
        for key, step in steps.items():
            times[key].append(step())
        print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {key: batch / statistics.median(t) for key, t in times.items()}


def time_models(models: list[tuple[str, int]], paths: list[str], precisions: list[str], device: torch.device,
                batch: int, warmup: int, repeats: int) -> list[Timed]:
    """Build every model once, prepare it for each path, then time all interleaved."""
    out, steps = [], {}
    for name, res in models:
        model = create(name, res)
        out.append(Timed(name, res, gmacs(model, name, res)[0], {}))
        for path in paths:
            prepared, layout = on_path(model, path)
            for precision in precisions:
                steps[(name, res, path, precision)] = timed_forward(prepared, res, batch, device, precision, layout)
        print(f"  built {name} @ {res}", file=sys.stderr, flush=True)
    ips = measure_interleaved(steps, batch, warmup, repeats)
    for t in out:
        t.ips = {(path, precision): v for (name, res, path, precision), v in ips.items() if (name, res) == (t.name, t.res)}
    return out


def markdown(timed: list[Timed], paths: list[str], precision: str, spread: dict | None = None) -> str:
    """One precision's table: img/s per path, the fast path's gain, and the ratios to PVTv2-B2;
    with `spread` ((name, res, path, precision) -> (median, lowest, highest) over processes) the
    ratio cells give the median ratio and its range."""
    ref = next(t for t in timed if (t.name, t.res) == REFERENCE)
    head = ["model", "res", "GMACs"] + [f"{p} img/s" for p in paths]
    if "plain" in paths and len(paths) > 1:
        head += [f"{p} / plain" for p in paths if p != "plain"]
    head += [f"{p}: ratio to pvt_v2_b2" for p in paths]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for t in timed:
        ips = [t.ips[(p, precision)] for p in paths]
        cells = [t.name, str(t.res), f"{t.gmacs:.2f}" if t.gmacs is not None else "?"] + [f"{v:.1f}" for v in ips]
        if "plain" in paths and len(paths) > 1:
            cells += [f"{t.ips[(p, precision)] / t.ips[('plain', precision)]:.2f}" for p in paths if p != "plain"]
        if spread:
            cells += ["{:.2f} ({:.2f}-{:.2f})".format(*spread[(t.name, t.res, p, precision)]) for p in paths]
        else:
            cells += [f"{t.ips[(p, precision)] / ref.ips[(p, precision)]:.2f}" for p in paths]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_only(only: list[str] | None) -> list[tuple[str, int]]:
    """The models to time, in table order: all by default, else those named (`name` or `name@res`),
    with the reference always first."""
    every = [REFERENCE] + [m for m in HIRI + BASELINES if m != REFERENCE]
    if not only:
        return every
    chosen = []
    for item in only:
        name, _, res = item.partition("@")
        hits = [m for m in every if m[0] == name and (not res or str(m[1]) == res)]
        if not hits:
            raise SystemExit(f"--only {item!r}: not one of {', '.join(f'{n}@{r}' for n, r in every)}")
        chosen += hits
    return [REFERENCE] + [m for m in every if m in chosen and m != REFERENCE]


def across_processes(argv: list[str], processes: int) -> tuple[list[Timed], dict]:
    """The same measurement in `processes` fresh processes, one after another: img/s medians over
    them, and per (model, path, precision) the median, lowest and highest ratio to PVTv2-B2 (each
    process's own ratio: the models of one process share its state). Fresh processes because on
    a small shared CPU the spread between processes is larger than between rounds of one (README,
    "Throughput")."""
    import json
    import subprocess

    runs = []
    for k in range(processes):
        out = subprocess.run([sys.executable, __file__, *argv, "--processes", "1", "--json"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        runs.append([Timed(d["name"], d["res"], d["gmacs"], {tuple(key): v for key, v in d["ips"]})
                     for d in json.loads(out.strip().splitlines()[-1])])
        print(f"process {k + 1}/{processes} done", file=sys.stderr, flush=True)
    merged, spread = [], {}
    for i, t in enumerate(runs[0]):
        merged.append(Timed(t.name, t.res, t.gmacs, {key: statistics.median(r[i].ips[key] for r in runs) for key in t.ips}))
        for key in t.ips:
            ratios = []
            for r in runs:
                ref = next(x for x in r if (x.name, x.res) == REFERENCE)
                ratios.append(r[i].ips[key] / ref.ips[key])
            spread[(t.name, t.res, *key)] = (statistics.median(ratios), min(ratios), max(ratios))
    return merged, spread


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"),
                    help="default: fp32, and bf16 where the device has it natively")
    ap.add_argument("--paths", nargs="+", choices=PATHS[:2], default=list(PATHS[:2]))
    ap.add_argument("--compile", action="store_true", help="add the torch.compile'd fast path")
    ap.add_argument("--only", nargs="*", help="models to time, `name` or `name@res` (default: all)")
    ap.add_argument("--processes", type=int, default=1,
                    help="repeat the whole measurement in this many fresh processes; ratios as median (range)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.processes < 1:
        raise SystemExit(f"--processes {args.processes}: expected 1 or more")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = args.precision or (["fp32", "bf16"] if bf16_native(device) else ["fp32"])
    if "bf16" in precisions and not bf16_native(device):
        raise SystemExit(f"--precision bf16: {device} has no native bf16 (emulated bf16 would be timed)")
    paths = args.paths + (["compiled"] if args.compile else [])

    models = parse_only(args.only)
    if args.processes > 1:
        timed, spread = across_processes(argv, args.processes)
    else:
        timed, spread = time_models(models, paths, precisions, device, args.batch_size, args.warmup, args.repeats), None
    if args.json:
        import json

        print(json.dumps([{"name": t.name, "res": t.res, "gmacs": t.gmacs, "ips": [[list(k), v] for k, v in t.ips.items()]}
                          for t in timed]))
        return
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"cpu, {args.threads} threads"
    over = f"; img/s: medians over {args.processes} processes, ratios: median (lowest-highest)" if spread else ""
    for precision in precisions:
        print(f"\nInference throughput, {precision} ({where}, batch {args.batch_size}, median of {args.repeats} "
              f"interleaved rounds after {args.warmup} warm-up{over}; torch {torch.__version__})\n")
        print(markdown(timed, paths, precision, spread))


if __name__ == "__main__":
    main()
