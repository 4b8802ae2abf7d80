"""ADE20K (ADEChallengeData2016) for the UPerNet of Table 6: the dataset, mmseg's pipelines, mIoU.

Labels follow mmseg's `reduce_zero_label`: ADE's 0 ("other") becomes the ignore index 255 and
1..150 become 0..149; ids above 150 (not ADE's) are ignored too and counted. The train pipeline
is mmseg's ADE20K 512x512 one (configs/_base_/datasets/ade20k.py, which Swin's UPerNet and so
the paper use), in the same order:

    RandomResize(scale, ratio_range, keep_ratio) -> RandomCrop(crop, cat_max_ratio)
    -> RandomFlip -> PhotoMetricDistortion -> Normalize -> Pad(crop; image 0, label 255)

Every random draw comes from (seed, epoch, index) through pipeline.data.seeding, one stream per
kind of draw, so a sample's augmentation does not depend on the loader's workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex
from torchvision.transforms import InterpolationMode

from pipeline.config import SegmentationRecipe
from pipeline.data.progress import progress_bar
from pipeline.data.seeding import CROP, FLIP, PHOTOMETRIC, RESCALE, python_key
from pipeline.transfer.coco import TransferDataError, listed_files, load_rgb

NUM_CLASSES = 150
IGNORE = 255

# reduce_zero_label as a lookup table over the PNG's byte values: 0 and ids > 150 -> 255.
_LUT = np.full(256, IGNORE, np.uint8)
_LUT[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)

_SPLIT_DEFECTS = ("image_without_mask", "mask_without_image", "size_mismatch", "unreadable")


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's imrescale: the largest size with the long side <= max(scale) and the short side <=
    min(scale), aspect ratio kept; returns (new_w, new_h)."""
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(python_key(seed, epoch, index, stream))


def _read_mask(path: Path) -> np.ndarray:
    """The PNG's index values as uint8 [H, W] (mode L, or P read as its indices)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise TransferDataError(f"{path}: segmentation PNG has mode {im.mode}; expected an 8-bit index "
                                        f"mask (mode L or P)")
            return np.asarray(im, np.uint8).copy()
    except (OSError, ValueError) as err:
        if isinstance(err, TransferDataError):
            raise
        raise TransferDataError(f"{path}: cannot decode the mask ({err})") from None


def photometric_distortion(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a uint8 [3, H, W] image, each op applied with probability
    0.5: brightness +-32, contrast x0.5-1.5 (before or after the colour ops, at random),
    saturation x0.5-1.5, hue +-18 of OpenCV's 180 steps.

    Brightness and contrast are mmseg's plain add / multiply. Saturation and hue use torchvision:
    its hue rotation is mmseg's HSV hue shift; its saturation blends with the grey image where
    mmseg scales HSV's S channel (both scale the colourfulness by the factor, grey stays grey).
    All nine draws are taken every time, so the draws never shift with the outcome.
    """
    d = rng.random(9)
    brightness_on, delta = d[0] < 0.5, (d[1] * 2 - 1) * 32
    contrast_first = d[2] < 0.5
    contrast_on, alpha = d[3] < 0.5, 0.5 + d[4]
    saturation_on, sat = d[5] < 0.5, 0.5 + d[6]
    hue_on, hue = d[7] < 0.5, int(np.floor(d[8] * 37)) - 18  # randint(-18, 18) inclusive

    def contrast(x):
        return (x.float() * alpha).clamp_(0, 255).to(torch.uint8) if contrast_on else x

    if brightness_on:
        img = (img.float() + delta).clamp_(0, 255).to(torch.uint8)
    if contrast_first:
        img = contrast(img)
    if saturation_on:
        img = TF.adjust_saturation(img, sat)
    if hue_on:
        img = TF.adjust_hue(img, hue / 180)
    if not contrast_first:
        img = contrast(img)
    return img


def random_crop_box(label: np.ndarray, crop: int, cat_max_ratio: float, rng: np.random.Generator
                    ) -> tuple[int, int, int, int]:
    """mmseg RandomCrop: a crop of side `crop` (smaller where the image is); up to 10 redraws while
    one class holds cat_max_ratio or more of its labelled pixels. Returns (y1, y2, x1, x2)."""
    h, w = label.shape
    for attempt in range(10):
        y1 = int(rng.integers(0, max(h - crop, 0) + 1))
        x1 = int(rng.integers(0, max(w - crop, 0) + 1))
        box = (y1, min(y1 + crop, h), x1, min(x1 + crop, w))
        if cat_max_ratio >= 1.0:
            break
        values, counts = np.unique(label[box[0]:box[1], box[2]:box[3]], return_counts=True)
        counts = counts[values != IGNORE]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return box  # mmseg keeps the last draw when all ten fail


class ADE20K(torch.utils.data.Dataset):
    """ADEChallengeData2016 pairs through mmseg's train or test pipeline.

    Train: (image float32 [3, crop, crop] normalised, label int64 [crop, crop] in 0..149 or 255).
    Val: (image float32 [3, h, w] resized to recipe.scale keeping the ratio and normalised,
    label int64 [H, W] at the original size: score the prediction resized back to (H, W)).
    mean / std are on the 0..1 scale, e.g. (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
    """

    def __init__(self, root, split: Literal["training", "validation"], *, train: bool,
                 recipe: SegmentationRecipe, mean, std, seed: int = 0, max_unusable_fraction: float = 0.05):
        if split not in ("training", "validation"):
            raise ValueError(f"split {split!r}: expected 'training' or 'validation'")
        self.root = Path(root)
        self.image_dir = self.root / "images" / split
        self.mask_dir = self.root / "annotations" / split
        for d in (self.image_dir, self.mask_dir):
            if not d.is_dir():
                raise TransferDataError(f"{d}: folder not found (ADEChallengeData2016 layout: "
                                        f"images/{{training,validation}}, annotations/{{training,validation}})")
        self.train, self.recipe, self.seed = train, recipe, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.epoch = 0
        self.pairs, self.manifest, self.examples = self._scan()
        self._check(max_unusable_fraction)

    def _scan(self) -> tuple[list[tuple[Path, Path]], dict, dict[str, list[str]]]:
        """Pair images and masks by name; read only the headers (sizes), not the pixels."""
        images = {Path(n).stem: n for n in listed_files(self.image_dir) if n.lower().endswith((".jpg", ".jpeg"))}
        masks = {Path(n).stem: n for n in listed_files(self.mask_dir) if n.lower().endswith(".png")}
        counts = dict.fromkeys(("files", "pairs", *_SPLIT_DEFECTS, "labels_over_150_files",
                                "labels_over_150_pixels"), 0)
        examples: dict[str, list[str]] = {}

        def count(reason: str, what: Path) -> None:
            counts[reason] += 1
            if len(examples.setdefault(reason, [])) < 5:
                examples[reason].append(str(what))

        pairs = []
        for stem in sorted(images.keys() | masks.keys()):
            counts["files"] += 1
            if stem not in masks:
                count("image_without_mask", self.image_dir / images[stem])
                continue
            if stem not in images:
                count("mask_without_image", self.mask_dir / masks[stem])
                continue
            img_path, mask_path = self.image_dir / images[stem], self.mask_dir / masks[stem]
            try:
                with Image.open(img_path) as a, Image.open(mask_path) as b:
                    sizes = a.size, b.size
            except OSError:
                count("unreadable", img_path)
                continue
            if sizes[0] != sizes[1]:
                count("size_mismatch", mask_path)
                continue
            pairs.append((img_path, mask_path))
        counts["pairs"] = len(pairs)
        return pairs, counts, examples

    def _check(self, max_unusable_fraction: float) -> None:
        c = self.manifest
        bad = sum(c[k] for k in _SPLIT_DEFECTS)
        if (c["files"] and bad / c["files"] > max_unusable_fraction) or not self.pairs:
            detail = "; ".join(f"{k}: {c[k]} (e.g. {', '.join(self.examples[k])})" for k in _SPLIT_DEFECTS if c[k])
            raise TransferDataError(
                f"{self.image_dir.parent.parent}: {bad} of {c['files']} image/mask names unusable"
                f"{' (no pair left)' if not self.pairs else ''}, over the allowed fraction {max_unusable_fraction} "
                f"(transfer.max_unusable_fraction); {detail}")

    def scan_label_ids(self) -> dict:
        """Decode every mask once and count ids above 150 (files and pixels) into the manifest.

        Apart from the constructor because it reads every pixel (a minute on ADE's 20k masks);
        prepare_ade20k runs it once and records the counts. Such pixels are ignored (255) anyway.
        """
        with progress_bar() as bar:
            task = bar.add_task(f"checking {self.mask_dir.name} label ids", total=len(self.pairs))
            for _, mask_path in self.pairs:
                over = int((_read_mask(mask_path) > NUM_CLASSES).sum())
                if over:
                    self.manifest["labels_over_150_files"] += 1
                    self.manifest["labels_over_150_pixels"] += over
                    if len(self.examples.setdefault("labels_over_150", [])) < 5:
                        self.examples["labels_over_150"].append(str(mask_path))
                bar.advance(task)
        return self.manifest

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair as (uint8 [3, H, W] RGB, uint8 [H, W] labels 0..149 / 255)."""
        img_path, mask_path = self.pairs[index]
        img = load_rgb(img_path)
        label = _LUT[_read_mask(mask_path)]
        if img.size != (label.shape[1], label.shape[0]):
            raise TransferDataError(f"{img_path}: image is {img.size[0]}x{img.size[1]}, its mask "
                                    f"{label.shape[1]}x{label.shape[0]}")
        image = torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1)
        return image, torch.from_numpy(label)

    def _resize(self, image, label, scale):
        w, h = rescale_size(image.shape[2], image.shape[1], scale)
        # mmcv resizes with cv2's bilinear, no antialiasing; labels nearest.
        image = TF.resize(image, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=False)
        if label is not None:
            label = TF.resize(label[None], [h, w], interpolation=InterpolationMode.NEAREST)[0]
        return image, label

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 255 - self.mean) / self.std

    def __getitem__(self, index: int):
        image, label = self.load(index)
        r = self.recipe
        if not self.train:
            resized, _ = self._resize(image, None, r.scale)
            return self._normalise(resized), label.long()

        lo, hi = r.ratio_range
        ratio = lo + _rng(self.seed, self.epoch, index, RESCALE).random() * (hi - lo)
        image, label = self._resize(image, label, (int(r.scale[0] * ratio), int(r.scale[1] * ratio)))
        y1, y2, x1, x2 = random_crop_box(label.numpy(), r.crop_size, r.cat_max_ratio,
                                         _rng(self.seed, self.epoch, index, CROP))
        image, label = image[:, y1:y2, x1:x2], label[y1:y2, x1:x2]
        if _rng(self.seed, self.epoch, index, FLIP).random() < r.hflip:
            image, label = image.flip(-1), label.flip(-1)
        if r.photometric:
            image = photometric_distortion(image, _rng(self.seed, self.epoch, index, PHOTOMETRIC))
        image = self._normalise(image)
        pad_h, pad_w = r.crop_size - image.shape[1], r.crop_size - image.shape[2]
        if pad_h or pad_w:  # bottom / right, as mmseg's Pad
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        return image.contiguous(), label.long()


class MIoU(MulticlassJaccardIndex):
    """mmseg's mIoU: per-class IoU over the whole set, ignored pixels (label 255) left out of both
    prediction and label, classes absent from both left out of the mean (nanmean).

    torchmetrics' macro Jaccard index has exactly those semantics (weights 0 for the ignore index
    and for classes whose row and column of the confusion matrix are empty; tests/
    test_transfer_data.py checks it against a hand-computed example), and it sums the confusion
    matrix across ranks when distributed (the transfer task passes pipeline.train.collectives'
    all_gather as `dist_sync_fn`, so that the CPU confusion matrix travels on the GPU under NCCL).
    `compute` adds the per-class IoU (NaN where a class is
    absent, as mmseg prints it) and the pixel accuracy (mmseg's aAcc), in percent.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE, dist_sync_fn=None):
        super().__init__(num_classes=num_classes, average="macro", ignore_index=ignore_index, validate_args=False,
                         dist_sync_fn=dist_sync_fn)

    def compute(self) -> dict:
        miou = float(super().compute()) * 100
        confmat = self.confmat.double()
        inter = confmat.diag()
        union = confmat.sum(0) + confmat.sum(1) - inter
        per_class = torch.where(union > 0, inter / union.clamp(min=1), torch.nan) * 100
        total = confmat.sum()
        acc = float(inter.sum() / total * 100) if total > 0 else 0.0
        return {"miou": miou, "per_class_iou": [float(v) for v in per_class], "acc": acc}
