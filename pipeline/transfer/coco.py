"""COCO 2017 for the detectors of Table 4: categories, the dataset, results and scoring.

The dataset follows mmdetection's train pipeline where torchvision leaves a choice open
(mmdet `CocoDataset._parse_ann_info`, `filter_empty_gt`, `Resize(clip_object_border=True)`):
crowd annotations are left out of the targets, boxes under 1 px or of zero area are dropped,
boxes reaching past the border are clipped to it, and in training an image with nothing left
to learn from is skipped. Nothing is resized or normalised here: torchvision's
`GeneralizedRCNNTransform` inside the model does both.

Every annotation or image that is dropped is counted by reason in `CocoDetection.manifest`; more
unusable ones than `max_unusable_fraction` mean the files cannot be trusted, and the dataset
refuses them with a `TransferDataError` naming the file.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.data.seeding import FLIP, python_key

# The 80 COCO categories with their real (non-contiguous) ids, in COCO's order
# (instances_val2017.json's `categories`).
COCO_CATEGORIES: list[dict] = [
    {"id": i, "name": n, "supercategory": s} for i, n, s in [
        (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
        (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
        (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
        (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
        (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
        (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
        (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
        (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
        (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
        (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
        (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
        (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
        (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
        (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
        (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
        (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
        (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
        (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
        (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
        (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
        (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
        (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
        (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
        (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
        (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
    ]
]
_CAT_IDS = [c["id"] for c in COCO_CATEGORIES]
_CONTIGUOUS = {cat_id: i for i, cat_id in enumerate(_CAT_IDS)}


def contiguous_to_cat_id(i: int) -> int:
    """Contiguous label 0..79 to the COCO category id (1..90, with gaps)."""
    if not 0 <= i < len(_CAT_IDS):
        raise ValueError(f"contiguous label {i} is outside 0..{len(_CAT_IDS) - 1}")
    return _CAT_IDS[i]


def cat_id_to_contiguous(cat_id: int) -> int:
    """COCO category id to the contiguous label 0..79."""
    if cat_id not in _CONTIGUOUS:
        raise ValueError(f"{cat_id} is not a COCO category id")
    return _CONTIGUOUS[cat_id]


class TransferDataError(ValueError):
    """A COCO / ADE20K file cannot be used, or too many are unusable; the message names the file."""


def load_rgb(path: str | Path) -> Image.Image:
    """An image as RGB (grayscale, CMYK, palette and RGBA converted); a file PIL cannot decode
    fails naming it. EXIF orientation is not applied: COCO's and ADE's annotations are given in
    the stored pixel layout (pycocotools and torchvision read them the same way)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise TransferDataError(f"{path}: cannot decode the image ({err})") from None


def image_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB to float32 [3, H, W] in 0..1."""
    return torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def quiet_coco(ann_file: str | Path):
    """pycocotools' COCO without its prints on stdout (stdout carries the stages' JSON)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def listed_files(folder: Path) -> dict[str, int]:
    """name -> size in bytes of every file in a folder, in one directory pass (no stat per image)."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as it:
        return {e.name: e.stat().st_size for e in it if e.is_file()}


# Reasons an annotation or image is dropped, and whether it counts as unusable (a defect in the
# files) or is by design (COCO holds crowd regions and images without objects on purpose).
ANN_DEFECTS = ("unknown_image", "unknown_category", "out_of_image", "box_degenerate", "no_polygon_left",
               "segmentation_invalid")
IMAGE_DEFECTS = ("missing_image", "unreadable_image")


def _clip_box(bbox, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """COCO xywh to xyxy clipped to the image, or None with the reason it is dropped (mmdet's rules)."""
    x, y, w, h = (float(v) for v in bbox)
    if not (w >= 1 and h >= 1):  # mmdet drops boxes under 1 px (also catches NaN)
        return None, "box_degenerate"
    if min(x + w, width) - max(x, 0.0) <= 0 or min(y + h, height) - max(y, 0.0) <= 0:
        return None, "out_of_image"
    box = [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:  # a sliver left after clipping
        return None, "box_degenerate"
    return box, ("box_clipped" if box != [x, y, x + w, y + h] else None)


def _check_segmentation(segm, width: int, height: int) -> tuple[object | None, int, str | None]:
    """(usable segmentation, polygons dropped, reason the annotation is dropped or None)."""
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        dropped = len(segm) - len(polys)
        return (polys, dropped, None) if polys else (None, dropped, "no_polygon_left")
    if isinstance(segm, dict) and isinstance(segm.get("counts"), (list, str, bytes)):
        if list(segm.get("size", [])) == [height, width]:
            return segm, 0, None
    return None, 0, "segmentation_invalid"


def decode_mask(segm, height: int, width: int) -> np.ndarray:
    """A polygon list, uncompressed RLE (counts list) or compressed RLE to an [H, W] uint8 mask."""
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle)


class CocoDetection(torch.utils.data.Dataset):
    """COCO 2017 images and targets for torchvision's detectors.

    Item: (image float32 [3, H, W] in 0..1 RGB, target) with target = boxes float32 [N, 4] xyxy
    in pixels, labels int64 [N] contiguous 0..79, image_id, orig_size (H, W), and masks uint8
    [N, H, W] when `masks`. In training (`train=True`) the image is flipped horizontally with
    probability `hflip`, drawn from (seed, epoch, index): call `set_epoch` before each epoch.
    """

    def __init__(self, root, split: Literal["train", "val"], *, masks: bool, train: bool, hflip: float = 0.5,
                 seed: int = 0, max_unusable_fraction: float = 0.05):
        if split not in ("train", "val"):
            raise ValueError(f"split {split!r}: expected 'train' or 'val'")
        self.root = Path(root)
        self.ann_file = self.root / "annotations" / f"instances_{split}2017.json"
        self.image_dir = self.root / f"{split}2017"
        self.masks, self.train, self.hflip, self.seed = masks, train, hflip, seed
        self.epoch = 0
        if not self.ann_file.is_file():
            raise TransferDataError(f"{self.ann_file}: annotation file not found")
        try:
            coco = quiet_coco(self.ann_file)
        except (ValueError, KeyError, TypeError) as err:  # not JSON, or not COCO's structure
            raise TransferDataError(f"{self.ann_file}: not a COCO annotation file ({err!r})") from None
        self.items, self.manifest, self.examples = self._scan(coco)
        self._check(max_unusable_fraction)

    # --- the one scan over the annotation file ---------------------------------------------------

    def _scan(self, coco) -> tuple[list[dict], dict, dict[str, list[str]]]:
        counts = dict.fromkeys(("images", "images_used", "annotations", "annotations_used", "crowd",
                                "box_clipped", "polygon_too_short", "no_annotations",
                                *IMAGE_DEFECTS, *ANN_DEFECTS), 0)
        examples: dict[str, list[str]] = {}

        def count(reason: str, what: str, n: int = 1) -> None:
            counts[reason] += n
            if len(examples.setdefault(reason, [])) < 5:  # a few names for the error message
                examples[reason].append(what)

        files = listed_files(self.image_dir)
        known_cats = {c for c in coco.cats if c in _CONTIGUOUS}
        anns = coco.dataset.get("annotations", [])
        counts["images"], counts["annotations"] = len(coco.imgs), len(anns)
        for ann in anns:
            if ann.get("image_id") not in coco.imgs:
                count("unknown_image", f"annotation {ann.get('id')} (image_id {ann.get('image_id')})")

        items = []
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            name = info["file_name"]
            if name not in files:
                count("missing_image", str(self.image_dir / name))
                continue
            if files[name] == 0:  # an empty file is caught here; other broken files when decoded
                count("unreadable_image", str(self.image_dir / name))
                continue
            targets = []
            for ann in coco.imgToAnns.get(img_id, []):
                where = f"annotation {ann.get('id')} of {name}"
                if ann.get("category_id") not in known_cats:
                    count("unknown_category", f"{where} (category_id {ann.get('category_id')})")
                    continue
                box, note = _clip_box(ann.get("bbox", [0, 0, 0, 0]), info["width"], info["height"])
                if box is None:
                    count(note, where)
                    continue
                if ann.get("iscrowd", 0):
                    counts["crowd"] += 1  # by design: mmdet keeps them out of the targets (gt_bboxes_ignore)
                    continue
                if ann.get("area", 1) <= 0:
                    count("box_degenerate", where)
                    continue
                segm = None
                if self.masks:
                    segm, short, reason = _check_segmentation(ann.get("segmentation"), info["width"], info["height"])
                    if short:
                        count("polygon_too_short", where, short)
                    if reason:
                        count(reason, where)
                        continue
                if note:
                    count(note, where)
                targets.append({"box": box, "label": _CONTIGUOUS[ann["category_id"]], "segm": segm})
            if not targets:
                count("no_annotations", name)
                if self.train:  # mmdet filter_empty_gt; val keeps every image for the evaluator
                    continue
            counts["annotations_used"] += len(targets)
            items.append({"id": img_id, "file": name, "height": info["height"], "width": info["width"],
                          "targets": targets})
        counts["images_used"] = len(items)
        return items, counts, examples

    def _check(self, max_unusable_fraction: float) -> None:
        c = self.manifest
        bad_images = sum(c[k] for k in IMAGE_DEFECTS)
        bad_anns = sum(c[k] for k in ANN_DEFECTS)
        problems = []
        if c["images"] and bad_images / c["images"] > max_unusable_fraction:
            problems.append(f"{bad_images} of {c['images']} images unusable")
        if c["annotations"] and bad_anns / c["annotations"] > max_unusable_fraction:
            problems.append(f"{bad_anns} of {c['annotations']} annotations unusable")
        if not problems and not self.items:
            problems.append("no usable image")
        if problems:
            detail = "; ".join(f"{k}: {c[k]} (e.g. {', '.join(self.examples[k])})"
                               for k in (*IMAGE_DEFECTS, *ANN_DEFECTS, "no_annotations") if c[k])
            raise TransferDataError(
                f"{self.ann_file}: {' and '.join(problems)}, over the allowed fraction "
                f"{max_unusable_fraction} (transfer.max_unusable_fraction); {detail}")

    # --- items -----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def flipped(self, index: int) -> bool:
        """Whether item `index` is flipped this epoch: a pure function of (seed, epoch, index)."""
        if not self.train or self.hflip <= 0:
            return False
        rng = np.random.default_rng(python_key(self.seed, self.epoch, index, FLIP))
        return bool(rng.random() < self.hflip)

    def __getitem__(self, index: int):
        item = self.items[index]
        path = self.image_dir / item["file"]
        img = load_rgb(path)
        h, w = item["height"], item["width"]
        if img.size != (w, h):
            raise TransferDataError(f"{path}: image is {img.size[0]}x{img.size[1]}, the annotation file says {w}x{h}")
        image = image_tensor(img)
        targets = item["targets"]
        boxes = torch.tensor([t["box"] for t in targets], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes,
                  "labels": torch.tensor([t["label"] for t in targets], dtype=torch.int64),
                  "image_id": item["id"], "orig_size": (h, w)}
        if self.masks:
            masks = [decode_mask(t["segm"], h, w) for t in targets]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        if self.flipped(index):
            image = image.flip(-1)
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch):
    """Detection batches stay lists: images differ in size (the model's transform batches them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# --- results and scoring ----------------------------------------------------------------------------


def coco_results(outputs: list[dict], image_ids: list[int], *, masks: bool, label_offset: int) -> list[dict]:
    """torchvision detection outputs to COCO results entries (boxes xywh, RLE masks).

    `label_offset`: 0 for RetinaNet (labels 0..79), 1 for Mask R-CNN (0 is its background).
    Masks are thresholded at 0.5 as mmdet and torchvision's references do.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results = []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        scores = out["scores"].detach().float().cpu().numpy()
        labels = out["labels"].detach().cpu().numpy()
        rles = []
        if masks and len(boxes):
            m = (out["masks"].detach().cpu()[:, 0] > 0.5).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            entry = {"image_id": int(img_id), "category_id": contiguous_to_cat_id(int(labels[k]) - label_offset),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
            if masks:
                entry["segmentation"] = {"size": [int(s) for s in rles[k]["size"]],
                                         "counts": rles[k]["counts"].decode("ascii")}
            results.append(entry)
    return results


_STAT_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")
_IOU_SUFFIX = {"bbox": "box", "segm": "mask"}


def evaluate(ann_file, results: list[dict], iou_types: list[str], *, verbose: bool = False) -> dict[str, float]:
    """COCO AP (percent) per iou type: keys ap_box ... apl_box and ap_mask ... apl_mask.

    pycocotools' COCOeval, the reference the paper's mmdet numbers come from (faster-coco-eval
    matches it and is faster, but our sets are small and the paper-scale evaluation runs once per
    stage). An area range without ground truth keeps COCOeval's -1 (not a percent). No results
    at all score 0.
    """
    from pycocotools.cocoeval import COCOeval

    unknown = [t for t in iou_types if t not in _IOU_SUFFIX]
    if unknown:
        raise ValueError(f"iou types {unknown}: expected 'bbox' and/or 'segm'")
    out = {}
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        gt = quiet_coco(ann_file)
        for iou_type in iou_types:
            keys = [f"{s}_{_IOU_SUFFIX[iou_type]}" for s in _STAT_NAMES]
            # mmdet's CocoMetric drops the box from mask results: with a box, COCOeval takes the
            # instance's area from it, and APs/APm/APl of the masks shift.
            dets = [({k: v for k, v in r.items() if k != "bbox"} if iou_type == "segm" else dict(r))
                    for r in results if iou_type == "bbox" or "segmentation" in r]
            if not dets:
                out.update(dict.fromkeys(keys, 0.0))
                continue
            ev = COCOeval(gt, gt.loadRes(dets), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({k: (float(v) * 100 if v >= 0 else -1.0) for k, v in zip(keys, ev.stats[:6])})
    return out
