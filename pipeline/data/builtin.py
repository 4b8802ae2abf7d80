"""The built-in dataset: small, learnable, generated deterministically in ImageNet's layouts.

Every class is a (shape, fill texture, colour) triple; each image draws its own position, scale,
aspect ratio, rotation, colour jitter, background and size, so a model has to learn the class
cues rather than memorise pixels. Shape, texture and hue each differ between neighbouring
classes, so the classes stay separable after the recipe's heavy augmentation (RandomResizedCrop
down to 8 % of the area, RandAugment colour ops), which is what the CPU smoke run needs.

Layouts written under `root` (the real sets' layouts, file names included):

    imagenet/train/<wnid>/<wnid>_<i>.JPEG
    imagenet/val/<wnid>/ILSVRC2012_val_<n:08d>.JPEG
    imagenet_v2/<class index>/<sha1>.jpeg          (ImageNet-V2 matched-frequency)
    imagenet/LOC_synset_mapping.txt                 (wnid and a description per line)

Each image is seeded from (seed, split, class, index), so a file's bytes do not depend on the
order or the number of processes that generate them.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.config import BuiltinDataParams
from pipeline.data.progress import progress_bar

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon")
TEXTURES = ("solid", "stripes", "checker", "dots", "rings")
SPLITS = {"train": 0, "val": 1, "v2": 2}


def wnid(class_index: int) -> str:
    """A WordNet-style id; sorted wnid order equals class order, as the class index requires."""
    return f"n9{class_index:07d}"


@dataclass(frozen=True)
class ClassSpec:
    shape: str
    texture: str
    hue: float  # 0..1
    angle: float  # stripe direction, radians

    def describe(self) -> str:
        return f"{self.texture} {self.shape}, hue {self.hue:.2f}"


def class_spec(c: int) -> ClassSpec:
    # 7 shapes and 5 textures are coprime, so the first 35 classes never share both; the hue
    # walks the circle by the golden ratio, so consecutive classes are far apart in colour.
    return ClassSpec(
        shape=SHAPES[c % len(SHAPES)],
        texture=TEXTURES[c % len(TEXTURES)],
        hue=(c * 0.6180339887) % 1.0,
        angle=(c * 0.7) % math.pi,
    )


def _unit_polygon(shape: str) -> list[np.ndarray]:
    """Outlines of the shape in [-1, 1]^2; several outlines are drawn with alternating fill."""
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "circle":
        return [circle]
    if shape == "ring":
        return [circle, circle * 0.55]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85]
    if shape == "triangle":
        return [np.array([[0, -1], [0.95, 0.8], [-0.95, 0.8]], float)]
    if shape == "hexagon":
        a = np.arange(6) * math.pi / 3
        return [np.stack([np.cos(a), np.sin(a)], 1)]
    if shape == "star":
        a = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if shape == "cross":
        w = 0.35
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                          [-w, w], [-1, w], [-1, -w], [-w, -w]], float)]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _texture(kind: str, h: int, w: int, angle: float, period: float) -> np.ndarray:
    """A 0/1 pattern of shape (h, w): where the fill takes the primary colour."""
    if kind == "solid":
        return np.ones((h, w), bool)
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    if kind == "stripes":
        u = x * math.cos(angle) + y * math.sin(angle)
        return np.sin(2 * math.pi * u / period) > 0
    if kind == "checker":
        return ((x // (period / 2)).astype(int) + (y // (period / 2)).astype(int)) % 2 == 0
    if kind == "dots":
        return ((x % period - period / 2) ** 2 + (y % period - period / 2) ** 2) > (period / 4) ** 2
    if kind == "rings":
        r = np.hypot(x - w / 2, y - h / 2)
        return np.sin(2 * math.pi * r / period) > 0
    raise ValueError(f"unknown texture {kind!r}; known: {TEXTURES}")


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def gradient(rng: np.random.Generator, h: int, w: int, value: tuple[float, float]) -> np.ndarray:
    """A smooth two-colour gradient of low saturation (float32 RGB, 0..255), brightness drawn in
    `value`; the background of the built-in images here and in pipeline/transfer/builtin.py."""
    c0 = _rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(*value))
    c1 = _rgb(rng.random(), rng.uniform(0, 0.25), rng.uniform(*value))
    g = rng.uniform(-1, 1, 2).astype(np.float32)
    ramp = (g[0] * np.arange(w, dtype=np.float32)[None, :] / w
            + g[1] * np.arange(h, dtype=np.float32)[:, None] / h + 2) / 4
    # c0 * (1 - ramp) + c1 * ramp, the same operations in place (generation time is mostly these passes)
    out = np.empty((h, w, 3), np.float32)
    np.multiply(c0, (1 - ramp)[..., None], out=out)
    out += c1 * ramp[..., None]
    return out


def render(class_index: int, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One image of a class, every nuisance drawn from rng."""
    spec = class_spec(class_index)
    w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))

    # Background: a smooth two-colour gradient of low saturation, plus sensor-like noise.
    img = gradient(rng, h, w, (0.3, 0.9))

    # Object: position, scale, aspect ratio and rotation vary per image.
    size = rng.uniform(0.3, 0.7) * min(w, h) / 2
    aspect = math.exp(rng.uniform(-0.4, 0.4))
    rot = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(size, w - size), rng.uniform(size, h - size)
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for k, poly in enumerate(_unit_polygon(spec.shape)):
        pts = (poly * [size * aspect, size / aspect]) @ rmat.T + [cx, cy]
        draw.polygon([tuple(p) for p in pts], fill=255 if k % 2 == 0 else 0)
    m = np.asarray(mask, np.float32)[..., None] / 255

    hue = spec.hue + rng.normal(0, 0.02)
    fg = _rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    fg2 = fg * rng.uniform(0.35, 0.55)
    period = rng.uniform(0.12, 0.2) * size * 2
    pattern = _texture(spec.texture, h, w, spec.angle + rng.normal(0, 0.1), period)
    fill = np.take(np.stack([fg2, fg]), pattern.view(np.uint8), axis=0)  # where(pattern, fg, fg2), 5x faster
    # img * (1 - m) + fill * m, then noise: in place, the same operations in the same order
    img *= 1 - m
    fill *= m
    img += fill
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(2, 8))
    img += noise
    return Image.fromarray(np.clip(img, 0, 255, out=img).astype(np.uint8))


@dataclass(frozen=True)
class _Job:
    path: str
    seed: int
    split: str
    class_index: int
    index: int
    min_side: int
    max_side: int
    quality: tuple[int, int]


def _encode(job: _Job) -> bytes:
    rng = np.random.default_rng([job.seed, SPLITS[job.split], job.class_index, job.index])
    img = render(job.class_index, rng, job.min_side, job.max_side)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(job.quality[0], job.quality[1] + 1)))
    return buf.getvalue()


def _write(job: _Job) -> str:
    data = _encode(job)
    path = job.path
    if job.split == "v2":  # V2 names files by a hash of their content
        path = os.path.join(path, hashlib.sha1(data).hexdigest() + ".jpeg")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _jobs(cfg: BuiltinDataParams, root: Path) -> list[_Job]:
    common = dict(seed=cfg.seed, min_side=cfg.min_side, max_side=cfg.max_side, quality=tuple(cfg.jpeg_quality))
    jobs: list[_Job] = []
    val_number = 0
    for c in range(cfg.num_classes):
        wid = wnid(c)
        for i in range(cfg.train_per_class):
            p = root / "imagenet" / "train" / wid / f"{wid}_{i}.JPEG"
            jobs.append(_Job(str(p), split="train", class_index=c, index=i, **common))
        for i in range(cfg.val_per_class):
            # Real val numbers are interleaved over classes; ours only need to be unique.
            val_number += 1
            p = root / "imagenet" / "val" / wid / f"ILSVRC2012_val_{val_number:08d}.JPEG"
            jobs.append(_Job(str(p), split="val", class_index=c, index=i, **common))
        for i in range(cfg.v2_per_class):
            jobs.append(_Job(str(root / "imagenet_v2" / str(c)), split="v2", class_index=c, index=i, **common))
    return jobs


def generate(cfg: BuiltinDataParams, root: str | Path, workers: int = 2) -> dict:
    """Write the built-in dataset under root (replacing it); return counts per split.

    Written into a sibling temporary folder and renamed at the end, so an interrupted run never
    leaves a partial dataset under `root`.
    """
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = _jobs(cfg, tmp)
    for d in {os.path.dirname(j.path) if j.split != "v2" else j.path for j in jobs}:
        os.makedirs(d, exist_ok=True)
    with open(tmp / "imagenet" / "LOC_synset_mapping.txt", "w") as f:
        for c in range(cfg.num_classes):
            f.write(f"{wnid(c)} {class_spec(c).describe()}\n")

    with progress_bar() as bar, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        task = bar.add_task("generating built-in images", total=len(jobs))
        for _ in pool.map(_write, jobs, chunksize=16):
            bar.advance(task)

    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    counts = {s: sum(1 for j in jobs if j.split == s) for s in SPLITS}
    return {"num_classes": cfg.num_classes, "images": counts}


def layout(root: str | Path) -> dict[str, Path]:
    """Where generate() puts each split: train, val (ImageNet layout) and v2 (V2 layout)."""
    root = Path(root)
    return {"train": root / "imagenet" / "train", "val": root / "imagenet" / "val", "v2": root / "imagenet_v2"}
