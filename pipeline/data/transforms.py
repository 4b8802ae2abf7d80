"""The paper's input pipelines (Section 5.1, the DeiT / Swin recipe), built from timm's code.

Training: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) -> horizontal flip (p 0.5) ->
RandAugment rand-m9-mstd0.5-inc1 -> normalise -> Random Erasing (p 0.25, per-pixel noise).
Mixup / CutMix act on whole batches and live in the training step, not here.

Validation: resize the shorter side to resolution / crop_pct, centre crop resolution. crop_pct is
0.875 (= 224/256), the ratio of DeiT's and PVTv2's evaluation (`eval_crop_ratio=0.875`) and
Swin's `TEST.CROP` (resize to 256/224 x size, centre crop), i.e. the recipes the paper follows;
it is kept at every resolution (448 -> resize 512, crop 448) as those recipes do.

The torchvision backend runs the timm transforms as they are, in a worker process (or the main
one) whose global generators are seeded per sample (loaders.FileList). The FFCV backend runs the
same recipe compiled: FFCV's decoder with a seeded crop and flip, timm's RandAugment compiled with
numba (pipeline.data.randaugment, its op set read from timm's object) and timm's Random Erasing
with per-image generators (pipeline.data.ffcv_ops). In both, every draw is a function of
(run seed, epoch, sample index) alone.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

from pipeline.config import LoaderParams


def timm_train_parts(cfg: LoaderParams, resolution: int):
    """timm's training transform in its three parts: (crop+flip, RandAugment, tensor+norm+erase)."""
    return create_transform(
        input_size=resolution, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, vflip=0.0, auto_augment=cfg.auto_augment, interpolation=cfg.train_interpolation,
        mean=tuple(cfg.mean), std=tuple(cfg.std), re_prob=cfg.re_prob, re_mode=cfg.re_mode,
        re_count=cfg.re_count, separate=True,
        # DeiT passes color_jitter 0.4, which timm ignores once RandAugment is on; None keeps it
        # off also when auto_augment is turned off, so the second part is RandAugment or nothing.
        color_jitter=None)


def train_transform(cfg: LoaderParams, resolution: int) -> Callable:
    """PIL image -> normalised CHW float tensor, the whole training recipe (torchvision backend)."""
    from torchvision import transforms

    primary, secondary, final = timm_train_parts(cfg, resolution)
    return transforms.Compose([*primary.transforms, *patch_rand_augment(secondary).transforms, *final.transforms])


def val_transform(cfg: LoaderParams, resolution: int) -> Callable:
    """PIL image -> normalised CHW float tensor: resize to resolution / crop_pct, centre crop."""
    return create_transform(
        input_size=resolution, is_training=False, crop_pct=cfg.val_crop_pct, crop_mode="center",
        interpolation=cfg.val_interpolation, mean=tuple(cfg.mean), std=tuple(cfg.std))


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    # timm's PosterizeIncreasing reaches 0 bits at magnitude 10 (m9 with mstd 0.5 gets there in
    # about 2 % of draws); Pillow < 11 turned that into a black image, Pillow >= 11 raises
    # ValueError. Clearing every bit by hand keeps timm's intended result on any Pillow.
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def patch_rand_augment(transform):
    """Make timm's RandAugment ops safe on new Pillow (see _posterize); returns `transform`."""
    for t in getattr(transform, "transforms", [transform]):
        for op in getattr(t, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


def rand_augment(cfg: LoaderParams, resolution: int) -> Callable | None:
    """timm's RandAugment object for this recipe (PIL -> PIL), or None when disabled."""
    _, secondary, _ = timm_train_parts(cfg, resolution)
    return patch_rand_augment(secondary) if len(secondary.transforms) else None


def random_erasing(cfg: LoaderParams) -> RandomErasing | None:
    if cfg.re_prob <= 0:
        return None
    return RandomErasing(cfg.re_prob, mode=cfg.re_mode, max_count=cfg.re_count, device="cpu")


# --- FFCV operations ----------------------------------------------------------------------------

def ffcv_train_image_pipeline(cfg: LoaderParams, resolution: int, cell, *, device=None,
                              rand_augment_on: bool = True) -> list:
    """The training recipe as FFCV operations up to uint8 HWC batches, every draw seeded per sample
    from `cell` (an EpochCell: run seed and epoch); a CUDA `device` adds FFCV's ToDevice (pinned,
    asynchronous). Normalisation and Random Erasing follow on the device (ffcv_ops.DeviceTail).
    rand_augment_on=False drops RandAugment (benchmarks)."""
    from ffcv.transforms import ToDevice, ToTensor

    from pipeline.data.ffcv_ops import RandAugmentOp, SeededRandomResizedCropDecoder
    from pipeline.data.randaugment import RandAugmentSpec

    ops = [SeededRandomResizedCropDecoder((resolution, resolution), cell, scale=tuple(cfg.scale),
                                          ratio=tuple(cfg.ratio), hflip=cfg.hflip)]
    ra = rand_augment(cfg, resolution) if rand_augment_on else None
    if ra is not None:
        # timm's own object is read for the op set, magnitudes and fill, so both backends agree.
        ops.append(RandAugmentOp(RandAugmentSpec.from_timm(ra.transforms[0]), cell))
    ops.append(ToTensor())
    if device is not None and torch.device(device).type == "cuda":
        ops.append(ToDevice(torch.device(device), non_blocking=True))
    return ops


def ffcv_train_tail(cfg: LoaderParams, cell, device=None):
    """What follows ffcv_train_image_pipeline, on `device` (default the CPU)."""
    from pipeline.data.ffcv_ops import DeviceTail

    return DeviceTail(cfg.mean, cfg.std, cfg.re_prob, cfg.re_mode, cfg.re_count, cell, device or "cpu")


def ffcv_val_image_pipeline(cfg: LoaderParams, resolution: int) -> list:
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, ToTensor, ToTorchImage

    mean, std = np.array(cfg.mean) * 255, np.array(cfg.std) * 255
    # FFCV crops the central square of side crop_pct * shorter side, then resizes it to the
    # resolution: the same region as timm's resize-then-crop.
    return [CenterCropRGBImageDecoder((resolution, resolution), ratio=cfg.val_crop_pct),
            NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage(channels_last=False)]


def ffcv_label_pipeline(with_index: bool = False) -> list:
    """Labels as (B,) int64; with_index: (B, 2) rows [label, sample index] (the training tail's seeds)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToTensor

    if with_index:
        from pipeline.data.ffcv_ops import LabelWithIndex

        return [IntDecoder(), LabelWithIndex(), ToTensor()]
    return [IntDecoder(), ToTensor(), Squeeze(1)]
