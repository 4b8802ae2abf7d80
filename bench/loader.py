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

A third FFCV row runs the anchor loader ffcv-imagenet uses (FFCV's own RandomResizedCrop
decoder + flip + NormalizeImage, no RandAugment, no erasing, unseeded), so a reader sees what the
rest of the recipe and the seeding cost; a fourth the paper recipe on numba's default threading
layer (TBB) instead of the OpenMP one pipeline.data asks numba for. The time to the first batch
of a fresh process is given with numba's on-disk cache warm (the usual case: every training
process after the first) and cold.

A second table splits one image's cost into the pipeline's steps, single-threaded, to show
where the time goes (torchvision: timm's PIL RandAugment; FFCV: the compiled one, same ops).
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

VARIANTS = {
    "paper recipe": {},
    "without RandAugment": {"auto_augment": None},
}
ANCHOR = "anchor"  # --variant value: ffcv-imagenet's pipeline


def one_run(args) -> dict:
    """In a child process: img/s of one (backend, variant) configuration."""
    import torch

    from pipeline.config import load_params
    from pipeline.data.loaders import build_train_loader

    t_start = time.perf_counter()
    params = load_params(ROOT / "params.yaml")
    if args.variant == ANCHOR:
        batches = anchor_loader(args, params.data.loader)
    else:
        loader_cfg = params.data.loader.model_copy(update=json.loads(args.variant))
        data = params.data.model_copy(update={"loader": loader_cfg})
        batches = build_train_loader(data, args.resolution, args.batch_size, ffcv_dir=args.ffcv_dir,
                                     backend=args.backend, num_workers=args.workers)

    if args.warmup + args.batches > len(batches):
        raise SystemExit(f"--warmup {args.warmup} + --batches {args.batches} > {len(batches)} batches per epoch")
    rates, first_batch = [], None
    for epoch in range(args.repeats + 1):  # epoch 0 also pays numba compilation: not counted
        it = iter(batches)
        for _ in range(args.warmup):
            next(it)
            first_batch = first_batch or time.perf_counter() - t_start
        t, n = time.perf_counter(), 0
        for _ in range(args.batches):
            x, _ = next(it)
            n += len(x)
        if epoch > 0:
            rates.append(n / (time.perf_counter() - t))
        for _ in it:  # finish the epoch untimed, as training would
            pass
    return {"rates": rates, "threads": torch.get_num_threads(), "first_batch_s": first_batch}


def anchor_loader(args, cfg):
    """ffcv-imagenet's training loader: FFCV's stock RandomResizedCrop decoder, flip, normalise."""
    import numpy as np
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from pipeline.data.manifest import beton_path, load_manifest

    path = beton_path(load_manifest(args.ffcv_dir), "train", args.resolution, cfg.val_crop_pct, args.ffcv_dir)
    image = [RandomResizedCropRGBImageDecoder((args.resolution,) * 2), RandomHorizontalFlip(),
             NormalizeImage(np.array(cfg.mean) * 255, np.array(cfg.std) * 255, np.float32), ToTensor(),
             ToTorchImage(channels_last=False)]
    return Loader(str(path), batch_size=args.batch_size, num_workers=args.workers, order=OrderOption.RANDOM,
                  drop_last=True, pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(1)]})


def measure(args, backend: str, variant: dict | str, env: dict | None = None) -> dict:
    variant = variant if isinstance(variant, str) else json.dumps(variant)
    cmd = [sys.executable, __file__, "--one", backend, "--variant", variant,
           "--ffcv-dir", str(args.ffcv_dir), "--resolution", str(args.resolution), "--batch-size",
           str(args.batch_size), "--workers", str(args.workers), "--warmup", str(args.warmup),
           "--batches", str(args.batches), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed ({backend}, {variant}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def breakdown(args) -> list[tuple[str, str, float]]:
    """Single-threaded milliseconds per image for each step of both pipelines."""
    import numpy as np
    import torch

    from pipeline.config import load_params
    from pipeline.data import transforms as T
    from pipeline.data.images import load_rgb
    from pipeline.data.loaders import manifest_files
    from pipeline.data.manifest import load_manifest

    torch.set_num_threads(1)
    cfg = load_params(ROOT / "params.yaml").data.loader
    files = [p for p, _ in manifest_files(load_manifest(args.ffcv_dir), "train", args.ffcv_dir)][:96]
    from pipeline.data.ffcv_ops import DeviceTail
    from pipeline.data.randaugment import RandAugmentSpec, rand_augment_image
    from pipeline.data.seeding import RAND_AUGMENT, EpochCell, python_key

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
    # the training tail as the loader runs it, on a uint8 NHWC batch, the consumer holding each batch
    # until the next one as a training loop does
    batch = torch.stack([torch.from_numpy(np.array(a)) for a in augmented[:32]])
    tail = DeviceTail(cfg.mean, cfg.std, cfg.re_prob, cfg.re_mode, cfg.re_count, EpochCell(0, 0))
    x = tail(batch, range(len(batch)))  # compile (or load the cache)
    t = time.perf_counter()
    for _ in range(5):
        x = tail(batch, range(len(batch)))
    t_norm = (time.perf_counter() - t) / (5 * len(batch)) * 1e3

    spec = RandAugmentSpec.from_timm(ra.transforms[0])
    op_ids, fill = spec.arrays()
    arrays = [np.ascontiguousarray(np.asarray(c)) for c in crops]

    def compiled_ra(ia):
        i, a = ia
        dst, tmp = np.empty_like(a), np.empty_like(a)
        rand_augment_image(a, tmp, dst, np.uint64(python_key(0, 0, i, RAND_AUGMENT)), op_ids, spec.num_layers,
                           spec.prob, spec.magnitude, spec.magnitude_std, spec.magnitude_max, spec.translate_pct,
                           fill, spec.bilinear)
        return dst

    compiled_ra((0, arrays[0]))  # compile (or load numba's cache) before timing
    _, t_ra_c = ms(compiled_ra, list(enumerate(arrays)))
    rows += [("torchvision", "PIL decode (JPEG as stored)", t_dec),
             ("torchvision", "timm RandomResizedCrop (bicubic) + flip", t_crop),
             ("torchvision", "timm RandAugment rand-m9-mstd0.5-inc1 (PIL)", t_ra),
             ("torchvision", "ToTensor + Normalize + RandomErasing", t_final),
             ("FFCV", "seeded decode + RandomResizedCrop + flip (compiled)", ffcv_decode_ms(args, cfg)),
             ("FFCV", "RandAugment rand-m9-mstd0.5-inc1 (compiled, same ops)", t_ra_c),
             ("FFCV", "tail: normalise to float32 channels_last (compiled, reused buffer) + seeded RandomErasing", t_norm)]
    return rows


def ffcv_decode_ms(args, cfg) -> float:
    """The seeded compiled decode + crop + flip alone, one thread."""
    from ffcv.loader import Loader, OrderOption

    from pipeline.data.ffcv_ops import SeededRandomResizedCropDecoder
    from pipeline.data.manifest import beton_path, load_manifest
    from pipeline.data.seeding import EpochCell

    manifest = load_manifest(args.ffcv_dir)
    path = beton_path(manifest, "train", args.resolution, cfg.val_crop_pct, args.ffcv_dir)
    decoder = SeededRandomResizedCropDecoder((args.resolution,) * 2, EpochCell(0, 0), tuple(cfg.scale),
                                             tuple(cfg.ratio), cfg.hflip)
    loader = Loader(str(path), batch_size=args.batch_size, num_workers=1, order=OrderOption.RANDOM,
                    pipelines={"image": [decoder], "label": None})
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
    ffcv_rates, first = {}, {}
    for name, variant in VARIANTS.items():
        tv = measure(args, "torchvision", variant)
        ff = measure(args, "ffcv", variant)
        mt, mf = statistics.median(tv["rates"]), statistics.median(ff["rates"])
        ffcv_rates[name], first[name] = mf, ff["first_batch_s"]
        print(f"| {name} | {mt:.1f} | {mf:.1f} | {mf / mt:.2f}x |", flush=True)
    anchor = statistics.median(measure(args, "ffcv", ANCHOR)["rates"])
    paper = ffcv_rates["paper recipe"]
    print(f"| ffcv-imagenet's loader (FFCV RandomResizedCrop + flip + normalise, unseeded) | | {anchor:.1f} | |")
    tbb = statistics.median(measure(args, "ffcv", VARIANTS["paper recipe"], env={"NUMBA_THREADING_LAYER": "tbb"})["rates"])
    print(f"| paper recipe on numba's TBB threads (numba's default; ours prefers OpenMP) | | {tbb:.1f} | |")
    print(f"\nFFCV paper recipe / FFCV without RandAugment: {paper / ffcv_rates['without RandAugment']:.2f}x; "
          f"/ ffcv-imagenet's loader: {paper / anchor:.2f}x")
    with tempfile.TemporaryDirectory() as cache:
        cold = measure(args, "ffcv", VARIANTS["paper recipe"], env={"NUMBA_CACHE_DIR": cache})["first_batch_s"]
    print(f"FFCV paper recipe, fresh process to its first batch: {first['paper recipe']:.1f} s with numba's cache "
          f"warm, {cold:.1f} s cold (empty NUMBA_CACHE_DIR)")
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
