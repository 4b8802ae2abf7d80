"""ImageNet-layout folders (and an optional ImageNet-V2 folder) -> FFCV betons + manifest.json.

Out folder:

    <out>/manifest.json                 written last: present <=> the conversion finished
    <out>/r<max side>/{train,val,v2}.beton
    <out>/unreadable.json               only when a split had too many unreadable files

Order of work: every layout check first (cheap, so a wrong path fails in seconds), then each
file is decoded once to find the unreadable ones, then the betons are written. Each beton is
written under a temporary name and renamed when complete, and the old manifest is removed
before anything is written, so an interrupted run never leaves a folder that looks complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
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


class _FileDataset:
    """What the FFCV writer iterates: (8-bit RGB array, label) per readable file.

    FFCV's writer waits forever if a worker raises, so a file that fails now (it decoded in the
    check a moment ago: changed on disk, or a decoder difference) is logged to `error_log` and
    stands in as a 1x1 image; the caller then discards the beton and fails with the list.
    """

    def __init__(self, files: list[tuple[str, int]], error_log: Path):
        self.files = files
        self.error_log = error_log

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, label = self.files[i]
        try:
            image = np.asarray(load_rgb(path))
        except Exception as err:  # noqa: BLE001 -- any failure must reach the caller, not hang
            with open(self.error_log, "a") as f:
                f.write(json.dumps({"path": path, "reason": f"{type(err).__name__}: {err}"}) + "\n")
            image = np.zeros((1, 1, 3), np.uint8)
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
        writer = DatasetWriter(str(tmp), fields, num_workers=cfg.num_workers)
        writer.from_indexed_dataset(_FileDataset(files, errors), chunksize=cfg.chunk_size)
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
    start = time.time()
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
        "settings": cfg.model_dump(mode="json"),
        "splits": splits,
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


__all__ = ["ConversionError", "DataLayoutError", "Sources", "convert", "write_beton", "MANIFEST"]
