"""Conversion benchmark: images per second of our writer against a plain FFCV `DatasetWriter`
over the same folder, the same field settings (data.convert) and the same process count.

    python bench/convert.py [--src data/source/builtin/imagenet/train] [--workers 2]
                            [--max-sides 512 896] [--repeats 2]

Rows:
- ours: `pipeline.data.convert.write_split`, what convert_imagenet runs: each file decoded once
  for all max sides and encoded in `--workers` processes, one process placing the samples
  (byte-identical betons whatever the worker count, checkpointed every data.convert
  checkpoint_every_s);
- FFCV, N processes: ffcv-imagenet's write_imagenet.py (torchvision ImageFolder into
  `DatasetWriter(num_workers=N)`), one run per max side; its pages follow the order in which the
  processes finish, and its JPEG-or-raw draws are unseeded, so two runs differ;
- FFCV, 1 process: the same with num_workers=1 (reproducible page layout, still unseeded draws).

Only the writing is timed (the conversion's decode-once check of every file comes before it, in
both cases): from the call to the finished betons, in a fresh process per run (FFCV's import
compiles numba code, which is not timed). images/s counts source images per second over all max
sides. The median of `--repeats` runs is shown.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITERS = ("ours", "ffcv", "ffcv-1")


def one_run(args) -> float:
    """In a child process: seconds to write the betons of args.src with one writer."""
    import pipeline.data.beton  # noqa: F401 - imports FFCV, whose fields compile numba code: not timed
    from pipeline.config import load_params
    from pipeline.data.convert import beton_fields, write_split
    from pipeline.data.scan import imagenet_classes, list_imagenet_split

    cfg = load_params(ROOT / "params.yaml").data.convert.model_copy(
        update={"max_sides": args.max_sides, "num_workers": args.workers})
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.one == "ours":
            scan = list_imagenet_split("train", args.src, imagenet_classes(args.src))
            t = time.perf_counter()
            write_split(scan, Path(tmp), cfg, args.workers, log=lambda m: None)
            return time.perf_counter() - t
        from ffcv.writer import DatasetWriter
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(args.src))
        workers = args.workers if args.one == "ffcv" else 1
        t = time.perf_counter()
        for side in args.max_sides:
            DatasetWriter(f"{tmp}/r{side}.beton", beton_fields(cfg, side), num_workers=workers).from_indexed_dataset(
                dataset, chunksize=cfg.chunk_size)
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT / "data/source/builtin/imagenet/train",
                    help="an ImageNet-layout split (<wnid>/*): default the built-in train split")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-sides", type=int, nargs="+", default=None, help="default data.convert.max_sides")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="where the betons are written (default: the system's temp folder)")
    ap.add_argument("--one", choices=WRITERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.max_sides is None:
        from pipeline.config import load_params

        args.max_sides = load_params(ROOT / "params.yaml").data.convert.max_sides
    if args.one:
        print(json.dumps({"seconds": one_run(args)}))
        return 0
    if not args.src.is_dir():
        print(f"error: {args.src}: not a folder (run `dvc repro prepare_data` for the built-in set, or pass --src)",
              file=sys.stderr)
        return 2

    images = sum(1 for d in args.src.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())
    print(f"{images} images from {args.src}, max sides {args.max_sides}, {args.workers} processes, "
          f"median of {args.repeats}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    seconds: dict[str, list[float]] = {w: [] for w in WRITERS}
    for _ in range(args.repeats):  # interleaved, so that a change in load touches every writer alike
        for writer in WRITERS:
            cmd = [sys.executable, __file__, "--one", writer, "--src", str(args.src), "--workers", str(args.workers),
                   "--max-sides", *map(str, args.max_sides)] + (["--tmp", args.tmp] if args.tmp else [])
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            seconds[writer].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")

    labels = {"ours": "ours (convert_imagenet: decode once, encode in N processes, one placer)",
              "ffcv": f"FFCV DatasetWriter, {args.workers} processes (ffcv-imagenet's write_imagenet.py)",
              "ffcv-1": "FFCV DatasetWriter, 1 process"}
    base = statistics.median(seconds["ffcv"])
    print("| writer | seconds | images/s | vs FFCV, N processes |")
    print("| --- | ---: | ---: | ---: |")
    for writer in WRITERS:
        s = statistics.median(seconds[writer])
        print(f"| {labels[writer]} | {s:.1f} | {images / s:.1f} | {base / s:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
