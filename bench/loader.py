"""Loader benchmark: training images per second, FFCV vs torchvision, same images and recipe.

    python bench/loader.py [--ffcv-dir data/ffcv] [--resolution 448] [--batch-size 32]
                           [--workers 2] [--warmup 3] [--batches 10] [--repeats 5] [--no-breakdown]

Both loaders run the training pipeline of params.yaml (data.loader) at the same resolution with
the same worker count: FFCV over the train beton, torchvision over the same files (the
manifest's list). Every configuration runs in its own process (no fork after threads, no shared
caches between them). The built-in train split is only 25 batches of 32, so each timed run is
one epoch: its first `--warmup` batches (epoch start-up: FFCV's buffer allocation, the
workers' first prefetch) are not timed, the next `--batches` are; one whole untimed epoch first
pays for numba's compilation. The table reports the median over `--repeats` epochs.

A second table splits one image's cost into the pipeline's steps, single-threaded, to show
where the time goes (RandAugment is the same Python code in both loaders).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "paper recipe": {},
    "without RandAugment": {"auto_augment": None},
}


def one_run(args) -> dict:
    """In a child process: img/s of one (backend, variant) configuration."""
    import torch

    from pipeline.config import load_params
    from pipeline.data.loaders import build_train_loader

    params = load_params(ROOT / "params.yaml")
    loader_cfg = params.data.loader.model_copy(update=json.loads(args.variant))
    data = params.data.model_copy(update={"loader": loader_cfg})
    batches = build_train_loader(data, args.resolution, args.batch_size, ffcv_dir=args.ffcv_dir,
                                 backend=args.backend, num_workers=args.workers)

    if args.warmup + args.batches > len(batches):
        raise SystemExit(f"--warmup {args.warmup} + --batches {args.batches} > {len(batches)} batches per epoch")
    rates = []
    for epoch in range(args.repeats + 1):  # epoch 0 also pays numba compilation: not counted
        it = iter(batches)
        for _ in range(args.warmup):
            next(it)
        t, n = time.perf_counter(), 0
        for _ in range(args.batches):
            x, _ = next(it)
            n += len(x)
        if epoch > 0:
            rates.append(n / (time.perf_counter() - t))
        for _ in it:  # finish the epoch untimed, as training would
            pass
    return {"rates": rates, "threads": torch.get_num_threads()}


def measure(args, backend: str, variant: dict) -> dict:
    cmd = [sys.executable, __file__, "--one", backend, "--variant", json.dumps(variant),
           "--ffcv-dir", str(args.ffcv_dir), "--resolution", str(args.resolution), "--batch-size",
           str(args.batch_size), "--workers", str(args.workers), "--warmup", str(args.warmup),
           "--batches", str(args.batches), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed ({backend}, {variant}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def breakdown(args) -> list[tuple[str, str, float]]:
    """Single-threaded milliseconds per image for each step of both pipelines."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.config import load_params
    from pipeline.data import transforms as T
    from pipeline.data.images import load_rgb
    from pipeline.data.loaders import manifest_files
    from pipeline.data.manifest import load_manifest

    torch.set_num_threads(1)
    cfg = load_params(ROOT / "params.yaml").data.loader
    files = [p for p, _ in manifest_files(load_manifest(args.ffcv_dir), "train", args.ffcv_dir)][:96]
    primary, secondary, final = T.timm_train_parts(cfg, args.resolution)
    ra = T.patch_rand_augment(secondary)

    def ms(fn, items):
        t = time.perf_counter()
        out = [fn(x) for x in items]
        return out, (time.perf_counter() - t) / len(items) * 1e3

    rows = []
    imgs, t_dec = ms(load_rgb, files)
    crops, t_crop = ms(primary, imgs)
    augmented, t_ra = ms(ra, crops)
    _, t_final = ms(final, augmented)
    batch = torch.stack([torch.from_numpy(np.array(a)) for a in augmented[:32]]).permute(0, 3, 1, 2).contiguous()
    out = torch.empty(batch.shape, dtype=torch.float32)
    norm, erase = T.normalizer(cfg), T.random_erasing(cfg)
    t = time.perf_counter()
    for _ in range(5):
        x = norm(batch, out)
        if erase is not None:
            erase(x)
    t_norm = (time.perf_counter() - t) / (5 * len(batch)) * 1e3
    _, t_ra_np = ms(lambda a: np.asarray(ra(Image.fromarray(np.asarray(a)))), crops)
    rows += [("torchvision", "PIL decode (JPEG as stored)", t_dec),
             ("torchvision", "timm RandomResizedCrop (bicubic) + flip", t_crop),
             ("both", "timm RandAugment rand-m9-mstd0.5-inc1", t_ra),
             ("torchvision", "ToTensor + Normalize + RandomErasing", t_final),
             ("FFCV", "array -> PIL, RandAugment, -> array", t_ra_np),
             ("FFCV", "normalise + RandomErasing (torch, batched)", t_norm)]
    rows.append(("FFCV", "decode + RandomResizedCrop + flip (compiled)", ffcv_decode_ms(args)))
    return rows


def ffcv_decode_ms(args) -> float:
    """FFCV's compiled decode + crop + flip alone, one thread."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip

    from pipeline.data.manifest import beton_path, load_manifest

    manifest = load_manifest(args.ffcv_dir)
    path = beton_path(manifest, "train", args.resolution, 0.875, args.ffcv_dir)
    loader = Loader(str(path), batch_size=args.batch_size, num_workers=1, order=OrderOption.RANDOM,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((args.resolution,) * 2), RandomHorizontalFlip()],
                               "label": None})
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for (x,) in it:
        n += len(x)
    return (time.perf_counter() - t) / n * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ffcv-dir", type=Path, default=ROOT / "data/ffcv")
    ap.add_argument("--resolution", type=int, default=448)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--one", choices=["ffcv", "torchvision"], help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.backend = args.one
        print(json.dumps(one_run(args)))
        return 0

    from pipeline.data.manifest import load_manifest

    manifest = load_manifest(args.ffcv_dir)  # clear error if the conversion has not run
    n = manifest["splits"]["train"]["images"]
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine shared with other jobs)")
    print(f"train split: {n} images, {len(manifest['classes'])} classes; resolution {args.resolution}, "
          f"batch {args.batch_size}, {args.workers} workers; {args.warmup} warm-up batches, "
          f"median of {args.repeats} runs x {args.batches} batches\n")
    print("| pipeline | torchvision img/s | FFCV img/s | FFCV / torchvision |")
    print("| --- | ---: | ---: | ---: |")
    for name, variant in VARIANTS.items():
        tv = measure(args, "torchvision", variant)
        ff = measure(args, "ffcv", variant)
        mt, mf = statistics.median(tv["rates"]), statistics.median(ff["rates"])
        print(f"| {name} | {mt:.1f} | {mf:.1f} | {mf / mt:.2f}x |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if not args.no_breakdown:
        print("\nOne image's cost per step, single thread (ms/img):\n")
        print("| loader | step | ms/img |")
        print("| --- | --- | ---: |")
        for who, step, t in breakdown(args):
            print(f"| {who} | {step} | {t:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
