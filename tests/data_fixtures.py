"""Small datasets for the data tests: a tiny built-in set, and a folder of awkward files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import BuiltinDataParams, ConvertParams


def tiny_builtin(root: Path, classes: int = 3, train: int = 4, val: int = 2, v2: int = 2) -> Path:
    from pipeline.data.builtin import generate

    cfg = BuiltinDataParams(num_classes=classes, train_per_class=train, val_per_class=val,
                            v2_per_class=v2, min_side=80, max_side=112)
    generate(cfg, root, workers=1)
    return root


def tiny_convert_cfg(**kw) -> ConvertParams:
    return ConvertParams(**{"max_sides": [64], "num_workers": 1, "chunk_size": 4, **kw})


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def awkward_imagenet(root: Path) -> dict:
    """train/ and val/ with two classes; train/n0 holds every kind of awkward file.

    Returns {"readable": {split: n}, "skipped": {file name: reason fragment}}.
    """
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8))
    good = _jpeg(rgb)
    files = {
        "gray.JPEG": _jpeg(rgb.convert("L")),
        "cmyk.JPEG": _jpeg(rgb.convert("CMYK")),
        "rgba.png": _png(rgb.convert("RGBA")),
        "palette.png": _png(rgb.convert("P")),
        "deep16.png": _png(Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16))),
        "good.JPEG": good,
        "truncated.JPEG": good[: len(good) // 2],
        "empty.JPEG": b"",
        "notes.txt": b"not an image\n",
        "html.JPEG": b"<html>404 Not Found</html>\n",
    }
    skipped = {"truncated.JPEG": "truncated", "empty.JPEG": "zero-byte", "notes.txt": "not an image",
               "html.JPEG": "not an image"}
    for split in ("train", "val"):
        for wnid in ("n0", "n1"):
            (root / split / wnid).mkdir(parents=True)
            (root / split / wnid / f"{wnid}_ok.JPEG").write_bytes(good)
    for name, data in files.items():
        (root / "train" / "n0" / name).write_bytes(data)
    readable = {"train": 2 + len(files) - len(skipped), "val": 2}
    return {"readable": readable, "skipped": skipped}
