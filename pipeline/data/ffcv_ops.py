"""FFCV operations whose random draws are seeded per sample (pipeline.data.seeding).

FFCV 1.0.2's RandomResizedCropRGBImageDecoder and RandomHorizontalFlip draw from numba's
per-thread generators, unseeded, so two runs never see the same crops. These replacements take
each draw from (seed, epoch, sample index) through an `EpochCell`: the decoder receives the
sample indices from FFCV, and the later operations ask for them (`with_indices`).

- `SeededRandomResizedCropDecoder`: decode + RandomResizedCrop (FFCV's crop sampler and its
  resize_crop, INTER_AREA) + horizontal flip, in one compiled pass.
- `RandAugmentOp`: timm's RandAugment, compiled (pipeline.data.randaugment).
- `LabelWithIndex`: the label and the sample's index, so that the steps after the loader can
  seed their draws per sample too.
- `DeviceTail`: the last steps, on the training device, after a batched uint8 copy (a quarter of
  float32's bytes over PCIe): normalisation and timm's RandomErasing, one generator per image.
- `os_cache_reader`: FFCV's page-cache reader without its side effect on numba's types.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from numba import types

from pipeline.data.randaugment import RandAugmentSpec, rand_augment_c
from pipeline.data.seeding import CROP, ERASE, FLIP, RAND_AUGMENT, EpochCell, kernel, python_key, sample_key, uniform


def os_cache_reader(manager) -> Callable:
    """FFCV's `OSCacheManager.compile_reader` (os_cache=True), the same reader compiled for the same
    types, but without changing numba's own.

    FFCV 1.0.2 types the read-only memory map by setting `mutable = False` on `numba.uint8[::1]`,
    an object numba interns and shares. Every function already compiled for byte arrays (FFCV's
    `imdecode` among them) then keeps its compiled versions under keys whose hash has changed:
    when a loader is dropped, numba's finalizer cannot find them and prints `Exception ignored
    in: <finalize object ...>` ... `KeyError: (Array(uint8, 1, 'C', True, aligned=True), ...`."""
    data = types.Array(types.uint8, 1, "C", readonly=True)  # FFCV's memmap is opened read-only
    index = types.uint64[::1]

    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, data(types.uint64, types.Tuple([data, index, index])))


@kernel
def random_crop(key, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """FFCV's get_random_crop (torchvision's RandomResizedCrop.get_params) on seeded draws:
    10 tries at an area in `scale` and a log-uniform aspect ratio, then the clamped whole image."""
    area = height * width
    for t in range(10):
        target_area = area * (scale_lo + (scale_hi - scale_lo) * uniform(key, 4 * t))
        aspect = math.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * uniform(key, 4 * t + 1))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(uniform(key, 4 * t + 2) * (height - h + 1))
            j = int(uniform(key, 4 * t + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < math.exp(log_ratio_lo):
        w = width
        h = int(round(w / math.exp(log_ratio_lo)))
    elif in_ratio > math.exp(log_ratio_hi):
        h = height
        w = int(round(h * math.exp(log_ratio_hi)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@kernel
def flip_in_place(img):
    W = img.shape[1]
    for y in range(img.shape[0]):
        for x in range(W // 2):
            for c in range(3):
                t = img[y, x, c]
                img[y, x, c] = img[y, W - 1 - x, c]
                img[y, W - 1 - x, c] = t


class SeededRandomResizedCropDecoder(ResizedCropRGBImageDecoder):
    """Decode, RandomResizedCrop to output_size, flip with probability hflip: seeded per sample."""

    def __init__(self, output_size, cell: EpochCell, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5):
        super().__init__(output_size)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop scale {scale}: expected 0 < low <= high <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"crop ratio {ratio}: expected 0 < low <= high")
        self.cell, self.scale, self.ratio, self.hflip = cell, tuple(scale), tuple(ratio), float(hflip)

    def get_crop_generator(self):  # abstract in FFCV; generate_code below draws its own crops
        raise NotImplementedError

    def generate_code(self) -> Callable:
        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        read_cell = self.cell.reader()
        s_lo, s_hi = self.scale
        r_lo, r_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        hflip = self.hflip

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            seed, epoch = read_cell()
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    temp_buffer = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                key = sample_key(seed, epoch, source_ix, CROP)
                i, j, h, w = random_crop(key, np.int64(height), np.int64(width), s_lo, s_hi, r_lo, r_hi)
                resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                if hflip > 0 and uniform(sample_key(seed, epoch, source_ix, FLIP), 0) < hflip:
                    flip_in_place(destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class RandAugmentOp(Operation):
    """timm's RandAugment (as `RandAugmentSpec`), compiled, on HWC uint8 images, seeded per sample."""

    def __init__(self, spec: RandAugmentSpec, cell: EpochCell):
        super().__init__()
        self.spec, self.cell = spec, cell

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        read_cell = self.cell.reader()
        s = self.spec
        op_ids, fill = s.arrays()
        num_layers, prob, magnitude, mstd, mmax = s.num_layers, s.prob, s.magnitude, s.magnitude_std, s.magnitude_max
        translate_pct, bilinear = s.translate_pct, s.bilinear
        # through a C pointer: FFCV compiles this function per loader, and would compile all of
        # RandAugment with it (randaugment.rand_augment_c)
        augment = rand_augment_c().ctypes

        def rand_augment(images, buffers, indices):
            dst, tmp = buffers
            if not (images.flags.c_contiguous and dst.flags.c_contiguous and tmp.flags.c_contiguous):
                raise ValueError("RandAugmentOp needs C-contiguous image batches")
            seed, epoch = read_cell()
            h, w = images.shape[1], images.shape[2]
            for i in my_range(images.shape[0]):
                key = sample_key(seed, epoch, indices[i], RAND_AUGMENT)
                augment(images[i].ctypes, tmp[i].ctypes, dst[i].ctypes, h, w, key, op_ids.ctypes, len(op_ids),
                        num_layers, prob, magnitude, mstd, mmax, translate_pct, fill.ctypes, bilinear)
            return dst[:images.shape[0]]

        rand_augment.is_parallel = True
        rand_augment.with_indices = True
        return rand_augment

    def declare_state_and_memory(self, previous_state):
        if previous_state.dtype != np.dtype("uint8") or len(previous_state.shape) != 3:
            raise ValueError(f"RandAugmentOp takes HWC uint8 images, got {previous_state.shape} {previous_state.dtype}")
        q = AllocationQuery(previous_state.shape, previous_state.dtype)
        return replace(previous_state, jit_mode=True), (q, q)


def normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, shift) with x * scale - shift == (x / 255 - mean) / std for uint8 x: a float32
    multiply, then a subtraction, the roundings of every normalisation of ours (DeviceTail)."""
    std = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    shift = (np.asarray(mean, dtype=np.float64) / std).astype(np.float32)
    return scale, shift


@kernel
def _normalize_nhwc(src, dst, scale, shift):
    # one pass, uint8 in, float32 out, over pixels in NHWC order (the batch's channels_last layout)
    for i in range(src.shape[0]):
        s = src[i].reshape(-1, 3)
        d = dst[i].reshape(-1, 3)
        for p in range(s.shape[0]):
            for c in range(3):
                d[p, c] = np.float32(s[p, c]) * scale[c] - shift[c]


def erase_one(img: torch.Tensor, key: int, probability: float, count: int, min_area=0.02, max_area=1 / 3,
              log_ratio=(math.log(0.3), math.log(1 / 0.3)), mode: str = "pixel") -> None:
    """timm's RandomErasing._erase on one normalised CHW image, in place, its draws from `key`.

    Same defaults as timm (area 2-33 %, aspect 0.3-3.3); mode pixel: per-pixel N(0, 1) noise,
    rand: one N(0, 1) colour per box, const: zeros. The boxes are drawn on the host, the noise on
    the image's device (on the CPU, the values the CPU loader drew before this ran on the device).
    """
    k = 0

    def draw() -> float:
        nonlocal k
        k += 1
        return float(uniform(np.uint64(key), k - 1))

    if draw() > probability:
        return
    chan, img_h, img_w = img.shape
    area = img_h * img_w
    gen = torch.Generator(device=img.device).manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF)
    for _ in range(count):
        for _attempt in range(10):
            target_area = (min_area + (max_area - min_area) * draw()) * area / count
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draw())
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < img_w and h < img_h:
                top = int(draw() * (img_h - h + 1))
                left = int(draw() * (img_w - w + 1))
                if mode == "pixel":
                    fill = torch.empty((chan, h, w), dtype=img.dtype, device=img.device).normal_(generator=gen)
                elif mode == "rand":
                    fill = torch.empty((chan, 1, 1), dtype=img.dtype, device=img.device).normal_(generator=gen)
                else:
                    fill = torch.zeros((chan, 1, 1), dtype=img.dtype, device=img.device)
                img[:, top:top + h, left:left + w] = fill
                break


class LabelWithIndex(Operation):
    """(B, 1) labels -> (B, 2) int64 rows [label, sample index] (not compiled: a copy per batch)."""

    def generate_code(self) -> Callable:
        def tag(labels, dst, indices):
            n = len(indices)
            dst[:n, 0] = labels[:n, 0]
            dst[:n, 1] = indices
            return dst[:n]

        tag.with_indices = True
        return tag

    def declare_state_and_memory(self, previous_state):
        return (replace(previous_state, jit_mode=False, shape=(2,), dtype=np.dtype("int64")),
                AllocationQuery((2,), np.dtype("int64")))


class DeviceTail:
    """The training pipeline's last steps on the training device: a uint8 NHWC batch becomes
    float32 (x / 255 - mean) / std, NCHW in shape and channels_last in memory (NHWC's own bytes,
    no reorder), then Random Erasing per image seeded from (seed, epoch, sample index).

    The arithmetic is `normalization`'s (float32 multiply, then subtract) on every device, and the
    erasing erase_one's. On the CPU the normalisation is one compiled pass into a reused buffer: a
    fresh 77 MB batch (32 x 448 x 448 x 3 float32) is mapped anew by malloc and page-faulted in on
    every batch, which with three torch passes took 66 ms of a 448 batch on one thread against
    about 10 here (docs/data.md). A buffer is only reused once nothing outside holds its memory, so a batch
    kept by the consumer is never written over."""

    def __init__(self, mean, std, re_prob: float, re_mode: str, re_count: int, cell: EpochCell,
                 device: torch.device | str = "cpu"):
        if re_mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode {re_mode!r}: expected pixel, rand or const")
        self.device = torch.device(device)
        self.scale_np, self.shift_np = normalization(mean, std)
        self.scale = torch.from_numpy(self.scale_np).view(1, 3, 1, 1).to(self.device)
        self.shift = torch.from_numpy(self.shift_np).view(1, 3, 1, 1).to(self.device)
        self.re_prob, self.re_mode, self.re_count, self.cell = re_prob, re_mode, re_count, cell
        self._buffers: list[torch.Tensor] = []  # CPU: float32 NHWC batches, handed out as views

    def __call__(self, images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        if self.device.type == "cpu":
            nhwc = self._free_buffer(images.shape)
            _normalize_nhwc(images.numpy(), nhwc.numpy(), self.scale_np, self.shift_np)
            x = nhwc.permute(0, 3, 1, 2)  # a new view: what the consumer keeps counts as a use
        else:
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x.mul_(self.scale).sub_(self.shift)
        if self.re_prob > 0:
            seed, epoch = self.cell.seed, self.cell.epoch
            for i, index in enumerate(indices):
                erase_one(x[i], python_key(seed, epoch, int(index), ERASE), self.re_prob, self.re_count,
                          mode=self.re_mode)
        return x

    def _free_buffer(self, shape: torch.Size) -> torch.Tensor:
        """A float32 buffer of `shape` whose memory nobody else holds, a new one if none is."""
        for buf in self._buffers:
            if buf.shape == shape and _sole_owner(buf):
                return buf
        # A consumer's `for x, y in batches` still holds the last batch while the next is made, so
        # up to three are kept; past that the oldest is left to whoever holds it.
        buf = torch.empty(shape, dtype=torch.float32)
        self._buffers = self._buffers[-2:] + [buf]
        return buf


def _sole_owner(t: torch.Tensor) -> bool:
    # Tensors (views included) that share t's memory each hold a reference to its storage; t holds
    # one and the temporary storage object below another. A numpy array over it holds a tensor.
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata) == 2
