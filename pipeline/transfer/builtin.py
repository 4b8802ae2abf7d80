"""Built-in COCO 2017 and ADE20K sets: small, learnable, generated deterministically in the real layouts.

Objects and regions reuse the ImageNet built-in set's class cues (pipeline/data/builtin.py): a
(shape, fill texture, hue) triple per class, so a detector or segmenter learns them in a few
hundred CPU steps, while position, size, rotation and colour jitter vary per image.

    <root>/annotations/instances_{train,val}2017.json   COCO: images, annotations, categories
    <root>/{train,val}2017/<12-digit image id>.jpg
    <root>/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg             ADE20K
    <root>/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png        index masks 0..150

COCO annotations carry every kind the real file has: polygons (objects in full view), compressed
RLE (rings, whose hole a COCO polygon cannot hold, and occluded objects: the visible part), and a
few crowd regions (iscrowd 1, uncompressed RLE, as COCO stores them). Boxes and areas come from
the same pycocotools rasterisation that paints the object, so masks and boxes agree exactly.

Each image is seeded from (seed, split, index): a file's bytes do not depend on the number of
processes that write it.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from pipeline.config import AdeBuiltinParams, CocoBuiltinParams
from pipeline.data.builtin import _rgb, _texture, _unit_polygon, class_spec, gradient
from pipeline.data.progress import progress_bar
from pipeline.transfer.coco import COCO_CATEGORIES

COCO_SPLITS = {"train": 0, "val": 1}
ADE_SPLITS = {"training": 2, "validation": 3}


@dataclass(frozen=True)
class _Job:
    kind: str  # "coco" or "ade20k"
    split: str
    index: int
    seed: int
    path: str  # the image file; ADE's mask path is derived from it
    cfg: CocoBuiltinParams | AdeBuiltinParams


# --- shared drawing -----------------------------------------------------------------------------


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-saturation gradient with a faint texture: busy enough that edges alone do not give
    objects away, pale enough that their saturated colours do."""
    img = gradient(rng, h, w, (0.35, 0.85))
    faint = _texture("stripes", h, w, rng.uniform(0, math.pi), rng.uniform(6, 20))
    return img + np.where(faint, 10.0, -10.0)[..., None].astype(np.float32)


def _outline(shape: str, rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[np.ndarray]:
    """The shape's outlines (alternately filled and holes) at a random aspect ratio and rotation."""
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    rot = rng.uniform(0, 2 * math.pi)
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    return [(p * [radius * aspect, radius / aspect]) @ rmat.T + [cx, cy] for p in _unit_polygon(shape)]


def _fill(spec, rng: np.random.Generator, h: int, w: int, radius: float) -> np.ndarray:
    """The class's texture in its hue (and a darker shade), over the whole image."""
    fg = _rgb(spec.hue + rng.normal(0, 0.02), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    period = rng.uniform(0.25, 0.4) * radius
    pattern = _texture(spec.texture, h, w, spec.angle + rng.normal(0, 0.1), max(period, 4.0))[..., None]
    return np.where(pattern, fg, fg * rng.uniform(0.35, 0.55))


def _finish(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, rng: np.random.Generator, quality: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(quality[0], quality[1] + 1)))
    return buf.getvalue()


# --- COCO ---------------------------------------------------------------------------------------


def _rasterise(outlines: list[np.ndarray], h: int, w: int) -> tuple[np.ndarray, list[list[float]]]:
    """The mask pycocotools makes of the outlines (holes cut out), and the polygons, rounded and
    clipped to the image as COCO's are."""
    polys = []
    for p in outlines:
        p = np.stack([np.clip(p[:, 0], 0, w), np.clip(p[:, 1], 0, h)], 1)
        polys.append([round(float(v), 2) for v in p.reshape(-1)])
    mask = np.zeros((h, w), bool)
    for k, poly in enumerate(polys):
        m = mask_utils.decode(mask_utils.frPyObjects([poly], h, w)[0]).astype(bool)
        mask = mask | m if k % 2 == 0 else mask & ~m
    return mask, polys


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with a 0 run."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _ann(mask: np.ndarray, category_id: int, segmentation, iscrowd: int = 0) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"category_id": category_id, "iscrowd": iscrowd, "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_overlap(a, b) -> float:
    """Intersection over the smaller box: high when one object would hide much of another."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def render_coco(cfg: CocoBuiltinParams, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations (without ids)."""
    w, h = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    img = _background(rng, h, w)
    painted: list[tuple[np.ndarray, int, list | None, bool]] = []  # mask, category, polygons, crowd
    boxes: list[tuple[float, float, float, float]] = []

    # A crowd now and then (COCO marks a group it does not outline one by one as iscrowd): a
    # cluster of small copies of one category, painted first so objects may stand in front.
    if rng.random() < 0.15:
        c = int(rng.integers(cfg.categories))
        spec, short = class_spec(c), min(w, h)
        gx, gy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(4, 8))):
            r = rng.uniform(0.03, 0.05) * short
            m, _ = _rasterise(_outline(spec.shape, rng, gx + rng.normal(0, 0.08 * short),
                                       gy + rng.normal(0, 0.08 * short), r), h, w)
            mask |= m
        if mask.any():
            fill = _fill(spec, rng, h, w, 0.05 * short)
            img = np.where(mask[..., None], fill, img)
            painted.append((mask, c, None, True))
            ys, xs = np.nonzero(mask)
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))

    lo, hi = cfg.objects
    for _ in range(int(rng.integers(lo, hi + 1))):
        c = int(rng.integers(cfg.categories))
        spec = class_spec(c)
        radius = rng.uniform(*cfg.object_size) * min(w, h) / 2
        # Mostly apart, overlapping now and then (the second object hides part of the first).
        for _try in range(20):
            cx, cy = rng.uniform(0.6 * radius, w - 0.6 * radius), rng.uniform(0.6 * radius, h - 0.6 * radius)
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            if all(_box_overlap(box, b) < 0.3 for b in boxes):
                break
        mask, polys = _rasterise(_outline(spec.shape, rng, cx, cy, radius), h, w)
        if not mask.any():
            continue
        img = np.where(mask[..., None], _fill(spec, rng, h, w, radius), img)
        painted.append((mask, c, polys, False))
        boxes.append(box)

    # Annotate what stays visible: objects painted later hide parts of earlier ones.
    anns, cover = [], np.zeros((h, w), bool)
    for mask, c, polys, crowd in reversed(painted):
        visible = mask & ~cover
        cover |= mask
        if visible.sum() < 16:  # hidden (almost) entirely: nothing left to find
            continue
        cat_id = COCO_CATEGORIES[c]["id"]
        if crowd:
            anns.append(_ann(visible, cat_id, _uncompressed_rle(visible), iscrowd=1))
        elif len(polys) == 1 and (visible == mask).all():
            anns.append(_ann(visible, cat_id, polys))
        else:  # a ring's hole or an occluded object: a polygon list would claim hidden pixels
            anns.append(_ann(visible, cat_id, _compressed(visible)))
    anns.reverse()
    return _finish(img, rng), anns


# --- ADE20K -------------------------------------------------------------------------------------


def ade_class_split(classes: int) -> tuple[list[int], list[int]]:
    """Stuff ids (background bands, like ADE's wall / building / sky ...) and thing ids (objects)."""
    n_stuff = max(1, classes // 2)
    return list(range(1, n_stuff + 1)), list(range(n_stuff + 1, classes + 1))


def render_ade20k(cfg: AdeBuiltinParams, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One image and its index mask (0 = unlabelled, 1..cfg.classes)."""
    w, h = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    stuff, things = ade_class_split(cfg.classes)
    things = things or stuff

    # Background: 2-3 stuff classes in bands with wavy borders (sky over wall over floor).
    k = min(len(stuff), int(rng.integers(2, 4)))
    band_ids = [stuff[int(i)] for i in rng.permutation(len(stuff))[:k]]
    cuts = np.sort(rng.uniform(0.2, 0.8, k - 1)) * h
    x = np.arange(w, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None]
    band = np.zeros((h, w), np.int64)
    for cut in cuts:
        wave = cut + rng.uniform(0.02, 0.08) * h * np.sin(2 * math.pi * x / (rng.uniform(0.5, 1.5) * w)
                                                         + rng.uniform(0, 2 * math.pi))
        band += (y > wave[None, :]).astype(np.int64)
    label = np.asarray(band_ids, np.uint8)[band]
    img = np.zeros((h, w, 3), np.float32)
    for b, cls in enumerate(band_ids):
        img = np.where((band == b)[..., None], _fill(class_spec(cls), rng, h, w, 0.15 * h), img)

    # Objects of thing classes, each with a thin unlabelled border (ADE leaves object outlines 0).
    lo, hi = cfg.objects
    for _ in range(int(rng.integers(lo, hi + 1))):
        cls = things[int(rng.integers(len(things)))]
        spec = class_spec(cls)
        radius = rng.uniform(0.15, 0.4) * min(w, h) / 2
        cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
        m_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(m_img)
        for j, poly in enumerate(_outline(spec.shape, rng, cx, cy, radius)):
            draw.polygon([tuple(p) for p in poly], fill=255 if j % 2 == 0 else 0)
        border = np.asarray(m_img.filter(ImageFilter.MaxFilter(3)), bool)
        mask = np.asarray(m_img, bool)
        img = np.where(mask[..., None], _fill(spec, rng, h, w, radius), img)
        label = np.where(border & ~mask, 0, label)
        label = np.where(mask, cls, label).astype(np.uint8)
    return _finish(img, rng), Image.fromarray(label)  # uint8 [H, W]: mode L


# --- writing ------------------------------------------------------------------------------------


def _write(job: _Job):
    split_code = (COCO_SPLITS if job.kind == "coco" else ADE_SPLITS)[job.split]
    rng = np.random.default_rng([job.seed, split_code, job.index])
    if job.kind == "coco":
        img, anns = render_coco(job.cfg, rng)
        Path(job.path).write_bytes(_jpeg(img, rng, job.cfg.jpeg_quality))
        return img.size, anns
    img, label = render_ade20k(job.cfg, rng)
    Path(job.path).write_bytes(_jpeg(img, rng, job.cfg.jpeg_quality))
    label.save(ade_mask_path(job.path), "PNG")
    return img.size, None


def ade_mask_path(image_path: str | Path) -> Path:
    """images/<split>/X.jpg -> annotations/<split>/X.png."""
    p = Path(image_path)
    return p.parent.parent.parent / "annotations" / p.parent.name / (p.stem + ".png")


def _run(jobs: list[_Job], workers: int, what: str) -> list:
    with progress_bar() as bar, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        task = bar.add_task(what, total=len(jobs))
        results = []
        for r in pool.map(_write, jobs, chunksize=8):
            results.append(r)
            bar.advance(task)
    return results


def _replace(tmp: Path, root: Path) -> None:
    """Swap the finished set in: an interrupted run never leaves a partial set under root."""
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)


def _fresh(root: str | Path) -> tuple[Path, Path]:
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return root, tmp


def coco_image_id(split: str, index: int) -> int:
    # Ids differ across splits, as COCO's do; ids start at 1.
    return COCO_SPLITS[split] * 1_000_000 + index + 1


def generate_coco(cfg: CocoBuiltinParams, seed: int, root: Path | str, workers: int = 2) -> dict:
    """Write the built-in COCO 2017 set under root (replacing it); return counts per split."""
    root, tmp = _fresh(root)
    (tmp / "annotations").mkdir(parents=True)
    sizes = {"train": cfg.train_images, "val": cfg.val_images}
    jobs = []
    for split, n in sizes.items():
        (tmp / f"{split}2017").mkdir()
        jobs += [_Job("coco", split, i, seed, str(tmp / f"{split}2017" / f"{coco_image_id(split, i):012d}.jpg"), cfg)
                 for i in range(n)]
    results = _run(jobs, workers, "generating built-in COCO images")

    summary = {}
    for split in sizes:
        images, annotations = [], []
        for job, ((w, h), anns) in zip(jobs, results):
            if job.split != split:
                continue
            img_id = coco_image_id(split, job.index)
            images.append({"id": img_id, "file_name": Path(job.path).name, "width": w, "height": h})
            for a in anns:  # ids in file order: the same whatever the number of workers
                annotations.append({"id": len(annotations) + 1, "image_id": img_id, **a})
        doc = {"info": {"description": "HIRI-ViT built-in COCO-layout set (pipeline/transfer/builtin.py)",
                        "version": "1.0", "year": 2017},
               "licenses": [], "images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
        (tmp / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc, separators=(",", ":")))
        summary[split] = {"images": len(images), "annotations": len(annotations),
                          "crowd": sum(a["iscrowd"] for a in annotations),
                          "rle": sum(isinstance(a["segmentation"], dict) for a in annotations)}
    _replace(tmp, root)
    return {"categories_used": cfg.categories, "splits": summary}


def generate_ade20k(cfg: AdeBuiltinParams, seed: int, root: Path | str, workers: int = 2) -> dict:
    """Write the built-in ADEChallengeData2016 set under root (replacing it); return counts per split."""
    root, tmp = _fresh(root)
    names = {"training": "train", "validation": "val"}
    sizes = {"training": cfg.train_images, "validation": cfg.val_images}
    jobs = []
    for split, n in sizes.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "annotations" / split).mkdir(parents=True)
        jobs += [_Job("ade20k", split, i, seed, str(tmp / "images" / split / f"ADE_{names[split]}_{i + 1:08d}.jpg"), cfg)
                 for i in range(n)]
    _run(jobs, workers, "generating built-in ADE20K images")
    _replace(tmp, root)
    return {"classes_used": cfg.classes, "splits": {s: {"images": n} for s, n in sizes.items()}}
