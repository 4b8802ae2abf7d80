"""ImageNet-layout folders (and an optional ImageNet-V2 folder) -> FFCV betons + manifest.json.

Out folder:

    <out>/manifest.json                 written last: present <=> the conversion finished
    <out>/r<max side>/{train,val,v2}.beton
    <out>/unreadable.json               only when a split had too many unreadable files

Order of work: every layout check first (cheap, so a wrong path fails in seconds), then each
file is decoded once to find the unreadable ones, then the betons are written. Each beton is
written under a temporary name and renamed when complete, and the old manifest is removed
before anything is written, so an interrupted run never leaves a folder that looks complete.

The same input and settings give byte-identical files, whatever `num_workers` and `chunk_size`
(they set how fast, not what): the manifest holds no timings and no speed settings, FFCV's
writer runs as one process (its page layout follows the order its processes finish), and the
images it stores as JPEG in `proportion` mode are drawn per image index (see _FileDataset). So
`dvc repro convert_imagenet` after a speed change leaves data/ffcv, and every training stage
downstream, up to date.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ConvertParams
from pipeline.data.images import load_rgb
from pipeline.data.scan import (DataLayoutError, SplitScan, check_same_classes, drop_unreadable,
                                imagenet_classes, list_imagenet_split, list_v2_split)

MANIFEST = "manifest.json"
UNREADABLE = "unreadable.json"
MANIFEST_FORMAT = 1
# data.convert keys that change how fast the conversion runs, never what it writes: kept out of
# the manifest (and out of convert_imagenet's params in dvc.yaml).
SPEED_SETTINGS = ("num_workers", "chunk_size")
# FFCV's `proportion` mode stores an image as JPEG when np.random.rand() < compress_probability;
# numpy's global generator is seeded with (JPEG_CHOICE_SEED, image index) before each image.
JPEG_CHOICE_SEED = 0


class ConversionError(RuntimeError):
    """The conversion cannot produce complete betons; the message says what and where."""


@dataclass(frozen=True)
class Sources:
    train: Path
    val: Path
    v2: Path | None = None


def variant_dir(max_side: int) -> str:
    return f"r{max_side}"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _load_resized(path: str, max_side: int) -> tuple[np.ndarray | None, str | None]:
    """(8-bit RGB array shrunk to max_side as FFCV would, None) or (None, why it failed)."""
    from ffcv.fields.rgb_image import resizer

    try:
        # FFCV's own resizer: the writer's call on the result is then a no-op (max side <= max_side)
        return resizer(np.asarray(load_rgb(path)), max_side), None
    except Exception as err:  # noqa: BLE001 -- reported by the writer, which must not raise
        return None, f"{type(err).__name__}: {err}"


def _load_chunk(paths: list[str], max_side: int) -> list[tuple[np.ndarray | None, str | None]]:
    return [_load_resized(p, max_side) for p in paths]


class _FileDataset:
    """What the FFCV writer iterates: (8-bit RGB array, label) per readable file.

    FFCV's writer runs as one process here (its page layout follows the order its processes
    finish) and asks for images in index order; decoding and shrinking, the bulk of the work on
    full-size photographs, run ahead of it in `workers` processes, `chunk` images per task and at
    most 2 x `workers` tasks ahead (bounded memory). An image asked for out of that order is
    loaded directly: order only changes the speed.

    FFCV's `proportion` mode draws np.random.rand() in this same process right after taking the
    image: numpy's global generator is seeded here per image index, so which images become JPEG
    depends on nothing else (not on workers, scheduling or earlier runs).

    FFCV's writer waits forever if a worker raises, so a file that fails now (it decoded in the
    check a moment ago: changed on disk, or a decoder difference) is logged to `error_log` and
    stands in as a 1x1 image; the caller then discards the beton and fails with the list.
    """

    def __init__(self, files: list[tuple[str, int]], error_log: Path, max_side: int, workers: int = 1,
                 chunk: int = 100):
        self.files = files
        self.error_log = error_log
        self.max_side = max_side
        self.workers = workers
        self.chunk = max(1, chunk)
        self._pool: ProcessPoolExecutor | None = None
        self._ahead: deque = deque()  # (first index, stop index, future) in index order
        self._next = 0  # first index not yet handed to the pool

    def __len__(self) -> int:
        return len(self.files)

    def _from_pool(self, i: int):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        while len(self._ahead) < 2 * self.workers and self._next < len(self.files):
            start, stop = self._next, min(self._next + self.chunk, len(self.files))
            paths = [p for p, _ in self.files[start:stop]]
            self._ahead.append((start, stop, self._pool.submit(_load_chunk, paths, self.max_side)))
            self._next = stop
        while self._ahead and self._ahead[0][1] <= i:  # tasks wholly before i were skipped over
            self._ahead.popleft()[2].cancel()
        if not self._ahead or self._ahead[0][0] > i:
            return None
        start, stop, future = self._ahead[0]
        result = future.result()[i - start]
        if i == stop - 1:
            self._ahead.popleft()
        if i == len(self.files) - 1:
            self._pool.shutdown(wait=True)
            self._pool = None
        return result

    def __getitem__(self, i: int):
        path, label = self.files[i]
        result = None
        if self.workers > 1:
            try:
                result = self._from_pool(i)
            except Exception:  # noqa: BLE001 -- a broken pool costs speed, never the conversion
                result = None
        image, reason = result or _load_resized(path, self.max_side)
        if image is None:
            with open(self.error_log, "a") as f:
                f.write(json.dumps({"path": path, "reason": reason}) + "\n")
            image = np.zeros((1, 1, 3), np.uint8)
        np.random.seed([JPEG_CHOICE_SEED, i])
        return image, label


def write_beton(files: list[tuple[str, int]], path: Path, max_side: int, cfg: ConvertParams) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    errors = path.with_name(f".{path.name}.errors-{os.getpid()}")
    for p in (tmp, errors):
        p.unlink(missing_ok=True)
    fields = {
        "image": RGBImageField(write_mode=cfg.write_mode, max_resolution=max_side,
                               compress_probability=cfg.compress_probability, jpeg_quality=cfg.jpeg_quality),
        "label": IntField(),
    }
    try:
        writer = DatasetWriter(str(tmp), fields, num_workers=1)  # one process: see _FileDataset
        dataset = _FileDataset(files, errors, max_side, cfg.num_workers, cfg.chunk_size)
        writer.from_indexed_dataset(dataset, chunksize=cfg.chunk_size)
        if errors.exists():
            failed = [json.loads(line) for line in errors.read_text().splitlines()]
            raise ConversionError(
                f"{len(failed)} file(s) passed the check but failed while writing {path}: "
                + "; ".join(f"{f['path']} ({f['reason']})" for f in failed[:10]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)


def list_sources(src: Sources) -> list[SplitScan]:
    """All layout checks, before any slow work: class folders, empty folders, class sets."""
    classes = imagenet_classes(src.train)
    check_same_classes(f"{src.train}", classes, f"{src.val}", imagenet_classes(src.val))
    scans = [list_imagenet_split("train", src.train, classes), list_imagenet_split("val", src.val, classes)]
    if src.v2 is not None:
        scans.append(list_v2_split("v2", src.v2, classes))
    return scans


def check_unreadable(scans: list[SplitScan], out: Path, limit: float) -> None:
    """Fail (listing every unreadable file in out/unreadable.json) when a split is too broken."""
    bad = [s for s in scans if s.skipped and (not s.files or len(s.skipped) / s.total > limit)]
    if not bad:
        (out / UNREADABLE).unlink(missing_ok=True)
        return
    write_json_atomic(out / UNREADABLE, {s.name: {"source": s.root, "skipped": s.skipped} for s in scans})
    lines = [f"{s.name}: {len(s.skipped)} of {s.total} files in {s.root} are unreadable "
             f"({len(s.skipped) / s.total:.1%} > data.convert.max_unreadable_fraction = {limit:.1%})"
             for s in bad]
    raise ConversionError("\n".join(lines) + f"\nEvery unreadable file and why: {out / UNREADABLE}")


def _remove_old_betons(out: Path) -> None:
    # Betons of an earlier run would look complete next to an interrupted new one (and those of
    # max sides no longer configured would look current); only our own r<N>/ folders holding
    # nothing but betons and our temporaries are removed.
    for d in out.iterdir():
        if d.is_dir() and re.fullmatch(r"r\d+", d.name):
            if all(f.suffix == ".beton" or f.name.startswith(".") for f in d.iterdir()):
                shutil.rmtree(d)


def convert(src: Sources, out: str | Path, cfg: ConvertParams, check_workers: int | None = None) -> dict:
    """Convert the splits in `src` to betons under `out`; return the manifest (also written)."""
    out = Path(out)
    scans = list_sources(src)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, the folder is not complete
    _remove_old_betons(out)

    for scan in scans:
        drop_unreadable(scan, workers=check_workers or cfg.num_workers)
    check_unreadable(scans, out, cfg.max_unreadable_fraction)

    splits = {}
    for scan in scans:
        betons = {}
        for side in sorted(cfg.max_sides):
            d = out / variant_dir(side)
            d.mkdir(exist_ok=True)
            write_beton(scan.files, d / f"{scan.name}.beton", side, cfg)
            betons[str(side)] = f"{variant_dir(side)}/{scan.name}.beton"
        splits[scan.name] = {
            "source": scan.root,
            "layout": "imagenet-v2" if scan.name == "v2" else "imagenet",
            "betons": betons,
            "images": len(scan.files),
            "files_seen": scan.total,
            "per_class": scan.counts(),
            "skipped": scan.skipped,
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "classes": scans[0].classes,
        "settings": cfg.model_dump(mode="json", exclude=set(SPEED_SETTINGS)),
        "splits": splits,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


__all__ = ["ConversionError", "DataLayoutError", "Sources", "convert", "write_beton", "MANIFEST"]
