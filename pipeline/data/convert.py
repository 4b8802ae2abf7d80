"""ImageNet-layout folders (and an optional ImageNet-V2 folder) -> FFCV betons + manifest.json.

Out folder:

    <out>/manifest.json                 written last: present <=> the conversion finished
    <out>/r<max side>/{train,val,v2}.beton
    <out>/unreadable.json               only when a split had too many unreadable files

Work folder (`work`, default `<out>.partial` beside it): the betons while they are written, with
their checkpoints (pipeline.data.beton), so that a killed conversion resumes where it stopped
instead of starting over; removed once the manifest is written.

Order of work: every layout check first (cheap, so a wrong path fails in seconds), then each
file is decoded once to find the unreadable ones (this pass is redone by a resumed run: a
1/8-scale decode, a fraction of the writing), then each split's files are decoded again, once
for all max sides, and encoded in `workers` processes, and one process places the samples in the
betons in index order. The old manifest and betons are removed before anything is written, and
the new betons appear in <out> only when all are complete, so an interrupted run never leaves a
folder that looks complete.

The same input and settings give byte-identical files, whatever `num_workers`, `chunk_size`,
`checkpoint_every_s` and however often the run was interrupted (they set how fast, not what): the
betons are the ones FFCV's own writer writes as one process (tests/test_data_beton.py), the
images `proportion` mode stores as JPEG are drawn per image index, and the manifest holds no
timings and no speed settings. So `dvc repro convert_imagenet` after a speed change leaves
data/ffcv, and every training stage downstream, up to date.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline.config import ConvertParams
from pipeline.data.beton import BetonWriter, encode_sample
from pipeline.data.images import load_rgb
from pipeline.data.manifest import MANIFEST, MANIFEST_FORMAT
from pipeline.data.scan import (DataLayoutError, SplitScan, drop_unreadable, list_imagenet_split, list_v2_split,
                                source_classes)
from pipeline.data.sources import Sources, partial_dir

UNREADABLE = "unreadable.json"
# data.convert keys that change how the conversion runs, never what it writes: kept out of the
# manifest (and out of convert_imagenet's params in dvc.yaml).
SPEED_SETTINGS = ("num_workers", "chunk_size", "checkpoint_every_s")
# FFCV's `proportion` mode stores an image as JPEG when np.random.rand() < compress_probability;
# numpy's global generator is seeded with (JPEG_CHOICE_SEED, image index) before each image.
JPEG_CHOICE_SEED = 0


class ConversionError(RuntimeError):
    """The conversion cannot produce complete betons; the message says what and where."""


@dataclass
class Conversion:
    """What `convert` did: the manifest, and how long it took (kept out of the manifest)."""

    manifest: dict
    workers: int
    check_seconds: float  # layout checks and the decode-once pass
    write_seconds: float  # encoding and writing the betons
    resumed_images: int  # images an interrupted run had already written (per split, all sides)

    def metrics(self) -> dict:
        """The stage's metrics: images/s counts the source images this run converted (each
        written once per max side), over the whole run."""
        images = sum(s["images"] for s in self.manifest["splits"].values())
        seconds = self.check_seconds + self.write_seconds
        out = {"seconds": round(seconds, 1), "check_seconds": round(self.check_seconds, 1),
               "write_seconds": round(self.write_seconds, 1),
               "images_per_s": round((images - self.resumed_images) / max(seconds, 1e-9), 1),
               "workers": self.workers, "resumed_images": self.resumed_images}
        for name, split in self.manifest["splits"].items():
            out[f"{name}_images"] = split["images"]
            out[f"{name}_skipped"] = len(split["skipped"])
        return out


def variant_dir(max_side: int) -> str:
    return f"r{max_side}"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def beton_fields(cfg: ConvertParams, max_side: int) -> dict:
    from ffcv.fields import IntField, RGBImageField

    return {"image": RGBImageField(write_mode=cfg.write_mode, max_resolution=max_side,
                                   compress_probability=cfg.compress_probability, jpeg_quality=cfg.jpeg_quality),
            "label": IntField()}


def _encode_chunk(first: int, files: list[tuple[str, int]], cfg: ConvertParams) -> list:
    """Samples first, first+1, ... encoded for every max side (a list of EncodedSample in
    sorted-side order), or, for a file that fails now, why (str)."""
    fields = {side: beton_fields(cfg, side) for side in sorted(cfg.max_sides)}
    out = []
    for i, (path, label) in enumerate(files, first):
        try:
            image = np.asarray(load_rgb(path))
        except Exception as err:  # noqa: BLE001 -- reported by the caller, naming the file
            out.append(f"{type(err).__name__}: {err}")
            continue
        encoded = []
        for f in fields.values():
            np.random.seed([JPEG_CHOICE_SEED, i])  # FFCV's JPEG-or-raw draw, a function of the index
            encoded.append(encode_sample(f, (image, label)))  # FFCV's field shrinks to its max side
        out.append(encoded)
    return out


def _encoded(files: list[tuple[str, int]], start: int, cfg: ConvertParams, workers: int):
    """(first index, _encode_chunk result) for files[start:] in index order: up to `chunk_size`
    files per task in `workers` processes, at most 2 x `workers` tasks ahead (bounded memory)."""
    # at least 4 tasks per process: the writer waits for the first task whole
    size = max(1, min(cfg.chunk_size, (len(files) - start) // (4 * workers)))
    tasks = ((i, files[i:i + size]) for i in range(start, len(files), size))
    if workers <= 1:
        for i, chunk in tasks:
            yield i, _encode_chunk(i, chunk, cfg)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        ahead: deque = deque()
        for i, chunk in tasks:
            ahead.append((i, pool.submit(_encode_chunk, i, chunk, cfg)))
            if len(ahead) >= 2 * workers:
                i0, future = ahead.popleft()
                yield i0, future.result()
        while ahead:
            i0, future = ahead.popleft()
            yield i0, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def split_key(scan: SplitScan, cfg: ConvertParams, max_side: int) -> str:
    """What a beton holds: its files and labels in order, the settings that shape its bytes and
    the libraries that encode them. A checkpoint of another key is never resumed."""
    import cv2  # FFCV's JPEG encoder
    import PIL

    h = hashlib.sha256()
    settings = cfg.model_dump(mode="json", exclude=set(SPEED_SETTINGS) | {"max_sides", "max_unreadable_fraction"})
    h.update(json.dumps({"split": scan.name, "max_side": max_side, "settings": settings, "jpeg_seed": JPEG_CHOICE_SEED,
                         "versions": [version("ffcv"), cv2.__version__, PIL.__version__, np.__version__]},
                        sort_keys=True).encode())
    for path, label in scan.files:
        h.update(f"{path}\0{label}\n".encode())
    return h.hexdigest()


def write_split(scan: SplitScan, work: Path, cfg: ConvertParams, workers: int, log=print) -> int:
    """Write `scan`'s betons (one per max side) under `work`, resuming their checkpoints; return
    how many images an earlier, interrupted run had already written."""
    n = len(scan.files)
    sides = sorted(cfg.max_sides)
    writers = [BetonWriter.open(work / variant_dir(s) / f"{scan.name}.beton", beton_fields(cfg, s), n,
                                split_key(scan, cfg, s), log=log) for s in sides]
    start = min(w.next for w in writers)
    if start:
        log(f"[convert] {scan.name}: resuming at image {start} of {n} (checkpoint in {work})")
    t0 = last = time.monotonic()
    try:
        for first, results in _encoded(scan.files, start, cfg, workers):
            for i, result in enumerate(results, first):
                if isinstance(result, str):
                    raise ConversionError(f"{scan.files[i][0]} passed the check but failed while writing {scan.name}: "
                                          f"{result} (changed on disk?); rerun to resume from the last checkpoint")
                for w, sample in zip(writers, result):
                    if w.next == i:  # a writer whose checkpoint reached further skips what it holds
                        w.append(sample)
            done = first + len(results)
            if time.monotonic() - last >= cfg.checkpoint_every_s and done < n:
                for w in writers:
                    if not w.complete:  # killed between two finish() calls: one beton is done
                        w.checkpoint()
                last = time.monotonic()
                log(f"[convert] {scan.name}: {done}/{n} images ({done / n:.0%}), "
                    f"{(done - start) / (last - t0):.1f} img/s, checkpoint saved")
        for w in writers:
            w.finish()
    finally:
        for w in writers:
            w.close()
    seconds = time.monotonic() - t0
    log(f"[convert] {scan.name}: {n} images in {len(sides)} beton(s), {seconds:.1f} s "
        f"({(n - start) / max(seconds, 1e-9):.1f} img/s{f', resumed at {start}' if start else ''})")
    return start


def _place(src: Path, dst: Path) -> None:
    """dst as a second name of src (a copy across file systems): src stays until the manifest is
    written, so a kill while publishing loses nothing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def list_sources(src: Sources) -> list[SplitScan]:
    """All layout checks, before any slow work: class folders, empty folders, class sets."""
    classes = source_classes(src)
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


def convert(src: Sources, out: str | Path, cfg: ConvertParams, work: str | Path | None = None,
            workers: int | None = None, log=print) -> Conversion:
    """Convert the splits in `src` to betons under `out` (manifest written last), resuming the
    checkpoints an interrupted run left in `work` (default `<out>.partial`, sources.partial_dir);
    `workers` decoding processes (default cfg.num_workers)."""
    t0 = time.monotonic()
    out = Path(out)
    work = Path(work) if work is not None else partial_dir(out)
    workers = workers or cfg.num_workers
    scans = list_sources(src)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, the folder is not complete
    _remove_old_betons(out)

    for scan in scans:
        drop_unreadable(scan, workers=workers)
    check_unreadable(scans, out, cfg.max_unreadable_fraction)
    t_check = time.monotonic() - t0

    resumed = sum(write_split(scan, work, cfg, workers, log) for scan in scans)
    splits = {}
    for scan in scans:
        betons = {}
        for side in sorted(cfg.max_sides):
            name = f"{variant_dir(side)}/{scan.name}.beton"
            _place(work / name, out / name)
            betons[str(side)] = name
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
    shutil.rmtree(work)
    return Conversion(manifest, workers, t_check, time.monotonic() - t0 - t_check, resumed)


__all__ = ["Conversion", "ConversionError", "DataLayoutError", "Sources", "convert", "MANIFEST"]
