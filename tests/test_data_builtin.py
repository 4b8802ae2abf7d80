"""The built-in dataset: layouts, determinism, sizes, and classes that are easy to tell apart."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from pipeline.config import BuiltinDataParams
from pipeline.data.builtin import generate, layout, wnid


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layouts_and_counts(tmp_path):
    cfg = BuiltinDataParams(num_classes=12, train_per_class=2, val_per_class=1, v2_per_class=1,
                            min_side=60, max_side=90)
    assert generate(cfg, tmp_path / "b", workers=1)["images"] == {"train": 24, "val": 12, "v2": 12}
    lay = layout(tmp_path / "b")
    wnids = sorted(p.name for p in lay["train"].iterdir())
    assert wnids == [wnid(c) for c in range(12)]  # sorted WNID order is the class order
    assert sorted(p.name for p in lay["val"].iterdir()) == wnids
    assert sorted(int(p.name) for p in lay["v2"].iterdir()) == list(range(12))
    assert sorted(p.name for p in (lay["train"] / wnid(3)).iterdir()) == [f"{wnid(3)}_0.JPEG", f"{wnid(3)}_1.JPEG"]
    assert all(p.name.startswith("ILSVRC2012_val_") and p.suffix == ".JPEG" for p in lay["val"].rglob("*.JPEG"))
    v2_files = list(lay["v2"].rglob("*"))
    assert all(p.suffix == ".jpeg" and len(p.stem) == 40 for p in v2_files if p.is_file())
    for p in lay["train"].rglob("*.JPEG"):
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and all(60 <= s <= 90 for s in im.size)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = BuiltinDataParams(num_classes=2, train_per_class=2, val_per_class=1, v2_per_class=1,
                            min_side=48, max_side=64)
    generate(cfg, tmp_path / "a", workers=2)
    generate(cfg, tmp_path / "b", workers=1)
    generate(cfg.model_copy(update={"seed": 1}), tmp_path / "c", workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a").values()).isdisjoint(
        v for k, v in digest(tmp_path / "c").items() if k.endswith("JPEG") or k.endswith("jpeg"))


def test_classes_are_learnable(tmp_path):
    """A colour-histogram nearest-centroid classifier already beats chance by far on val."""
    cfg = BuiltinDataParams(num_classes=10, train_per_class=6, val_per_class=4, v2_per_class=1,
                            min_side=96, max_side=128)
    generate(cfg, tmp_path / "b", workers=2)
    lay = layout(tmp_path / "b")

    def features(split):
        xs, ys = [], []
        for c in range(10):
            for p in sorted((lay[split] / wnid(c)).iterdir()):
                a = np.asarray(Image.open(p).convert("HSV"), np.float32)
                # hue histogram of the saturated pixels: the object's colour
                sat = a[..., 1] > 100
                h, _ = np.histogram(a[..., 0][sat], bins=36, range=(0, 256))
                xs.append(h / max(1, h.sum()))
                ys.append(c)
        return np.array(xs), np.array(ys)

    xt, yt = features("train")
    xv, yv = features("val")
    centroids = np.stack([xt[yt == c].mean(0) for c in range(10)])
    pred = np.argmin(((xv[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == yv).mean() >= 0.6  # chance is 0.1
