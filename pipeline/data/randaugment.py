"""timm's RandAugment, compiled with numba, one image at a time, seeded per sample.

The op set, magnitudes, sign flips, probabilities and fill are read from timm's own
`rand_augment_transform` for the configured string (`rand-m9-mstd0.5-inc1`: 2 ops per image drawn
with replacement from 15, each applied with probability 0.5, magnitude ~ N(9, 0.5) clipped to
[0, 10], increasing-severity variants); `RandAugmentSpec.from_timm` refuses what it cannot
reproduce. Each op follows the Pillow code timm calls (ImageOps, ImageEnhance, Image.transform
with bicubic or bilinear resampling and timm's mean-colour fill), so the torchvision backend (timm
on PIL) and the FFCV backend (this module) apply the same augmentation; tests/test_randaugment.py
measures the difference per op on photographs.

Images are HWC uint8 arrays. The draws come from pipeline.data.seeding (stream RAND_AUGMENT), not
from Python's or NumPy's global generators, so the result depends on (seed, epoch, index) only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from pipeline.data.seeding import gauss, uniform

# Op ids. The kind of level -> argument mapping is fixed by the id (see _op_arg).
OP_IDS = {
    "AutoContrast": 0, "Equalize": 1, "Invert": 2, "Rotate": 3,
    "PosterizeIncreasing": 4, "SolarizeIncreasing": 5, "SolarizeAdd": 6,
    "ColorIncreasing": 7, "ContrastIncreasing": 8, "BrightnessIncreasing": 9, "SharpnessIncreasing": 10,
    "ShearX": 11, "ShearY": 12, "TranslateXRel": 13, "TranslateYRel": 14,
    "Posterize": 15, "Solarize": 16, "Color": 17, "Contrast": 18, "Brightness": 19, "Sharpness": 20,
}
_ENHANCE_BASE = {7: 0, 8: 1, 9: 2, 10: 3, 17: 0, 18: 1, 19: 2, 20: 3}  # color, contrast, brightness, sharpness
_LEVEL_DENOM = 10.0  # timm's: magnitude / 10 is the fraction of each op's range


@dataclass(frozen=True)
class RandAugmentSpec:
    """What timm's RandAugment object does, as numbers the compiled code takes."""

    op_ids: tuple[int, ...]
    num_layers: int
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float
    translate_pct: float
    fill: tuple[int, int, int]
    bilinear: bool  # else bicubic

    @classmethod
    def from_timm(cls, transform) -> "RandAugmentSpec":
        """Read a `timm.data.auto_augment.RandAugment` built by timm's create_transform."""
        from PIL import Image

        ops = transform.ops
        if transform.choice_weights is not None:
            raise ValueError("weighted RandAugment op choice ('-t...weights') is not compiled; use the torchvision backend")
        names = [op.name for op in ops]
        unknown = [n for n in names if n not in OP_IDS]
        if unknown:
            raise ValueError(f"RandAugment ops {unknown} have no compiled version (known: {sorted(OP_IDS)})")
        first = ops[0]
        for op in ops:
            if (op.prob, op.magnitude, op.magnitude_std, op.magnitude_max, op.kwargs["fillcolor"],
                    op.kwargs["resample"]) != (first.prob, first.magnitude, first.magnitude_std, first.magnitude_max,
                                               first.kwargs["fillcolor"], first.kwargs["resample"]):
                raise ValueError(f"RandAugment op {op!r} differs from {first!r}: per-op settings are not compiled")
        resample = first.kwargs["resample"]
        if resample not in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            raise ValueError(f"RandAugment resample {resample!r}: compiled for a fixed BICUBIC or BILINEAR only "
                             "(set data.loader.train_interpolation)")
        mstd = float(first.magnitude_std)
        if not math.isfinite(mstd):
            raise ValueError("RandAugment mstd > 100 (uniform magnitude) is not compiled; use the torchvision backend")
        fill = tuple(int(v) for v in first.kwargs["fillcolor"])
        return cls(tuple(OP_IDS[n] for n in names), int(transform.num_layers), float(first.prob),
                   float(first.magnitude), mstd, float(first.magnitude_max or _LEVEL_DENOM),
                   float(first.hparams.get("translate_pct", 0.45)), fill,
                   resample == Image.Resampling.BILINEAR)

    def arrays(self):
        return np.array(self.op_ids, dtype=np.int64), np.array(self.fill, dtype=np.uint8)


# --- look-up-table ops (ImageOps) -----------------------------------------------------------------

@njit(cache=True, nogil=True)
def _histogram(src):
    h = np.zeros((3, 256), dtype=np.int64)
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            for c in range(3):
                h[c, src[y, x, c]] += 1
    return h


@njit(cache=True, nogil=True)
def _apply_lut(src, dst, lut):
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            for c in range(3):
                dst[y, x, c] = lut[c, src[y, x, c]]


@njit(cache=True, nogil=True)
def _autocontrast_lut(src):
    # ImageOps.autocontrast(cutoff=0): stretch [lowest, highest] present value to [0, 255].
    h = _histogram(src)
    lut = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        lo = 0
        while lo < 256 and h[c, lo] == 0:
            lo += 1
        hi = 255
        while hi >= 0 and h[c, hi] == 0:
            hi -= 1
        if hi <= lo:
            for i in range(256):
                lut[c, i] = i
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            for i in range(256):
                v = int(i * scale + offset)
                lut[c, i] = 0 if v < 0 else (255 if v > 255 else v)
    return lut


@njit(cache=True, nogil=True)
def _equalize_lut(src):
    # ImageOps.equalize: PIL's cumulative-histogram table, per channel.
    h = _histogram(src)
    lut = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        total, last, nonzero = 0, 0, 0
        for i in range(256):
            if h[c, i]:
                total += h[c, i]
                last = h[c, i]
                nonzero += 1
        step = (total - last) // 255 if nonzero > 1 else 0
        if step == 0:
            for i in range(256):
                lut[c, i] = i
        else:
            n = step // 2
            for i in range(256):
                v = n // step
                lut[c, i] = v if v < 255 else 255
                n += h[c, i]
    return lut


@njit(cache=True, nogil=True)
def _point_lut(kind, arg):
    # 0 invert, 1 posterize (keep `arg` bits), 2 solarize (threshold), 3 solarize-add (add below 128)
    lut = np.empty((3, 256), dtype=np.uint8)
    a = int(arg)
    for i in range(256):
        if kind == 0:
            v = 255 - i
        elif kind == 1:
            v = 0 if a <= 0 else (i if a >= 8 else i & ~((1 << (8 - a)) - 1))
        elif kind == 2:
            v = i if i < a else 255 - i
        else:
            v = min(255, i + a) if i < 128 else i
        for c in range(3):
            lut[c, i] = v
    return lut


# --- ImageEnhance ops: blend with a degenerate image ----------------------------------------------

@njit(cache=True, nogil=True)
def _blend(degenerate, value, alpha):
    # Pillow's ImagingBlend: float32 interpolation, truncated; clipped when extrapolating.
    t = np.float32(degenerate) + np.float32(alpha) * (np.float32(value) - np.float32(degenerate))
    if t <= 0.0:
        return np.uint8(0)
    if t >= 255.0:
        return np.uint8(255)
    return np.uint8(int(t))


@njit(cache=True, nogil=True)
def _luma(r, g, b):
    # Pillow's RGB -> L: ITU-R 601-2 weights in 16-bit fixed point, rounded.
    return (np.int64(r) * 19595 + np.int64(g) * 38470 + np.int64(b) * 7471 + 0x8000) >> 16


@njit(cache=True, nogil=True)
def _blend_table(factor, rows):
    # _blend for every (degenerate, value) pair: the per-pixel work becomes one look-up, the
    # numbers stay Pillow's. rows: the degenerate values needed (all 256, or one).
    t = np.empty((256, 256), dtype=np.uint8)
    for d in rows:
        for v in range(256):
            t[d, v] = _blend(d, v, factor)
    return t


@njit(cache=True, nogil=True)
def _enhance(src, dst, which, factor):
    # which: 0 Color (blend with grey), 1 Contrast (with the mean grey), 2 Brightness (with black),
    # 3 Sharpness (with PIL's SMOOTH filter, border pixels kept).
    H, W, _ = src.shape
    if which == 0:
        t = _blend_table(factor, np.arange(256))
        for y in range(H):
            for x in range(W):
                g = _luma(src[y, x, 0], src[y, x, 1], src[y, x, 2])
                for c in range(3):
                    dst[y, x, c] = t[g, src[y, x, c]]
    elif which == 1 or which == 2:
        mean = 0
        if which == 1:
            total = 0
            for y in range(H):
                for x in range(W):
                    total += _luma(src[y, x, 0], src[y, x, 1], src[y, x, 2])
            mean = int(total / (H * W) + 0.5)
        t = _blend_table(factor, np.array([mean]))
        lut = np.empty((3, 256), dtype=np.uint8)
        for c in range(3):
            lut[c] = t[mean]
        _apply_lut(src, dst, lut)
    else:
        t = _blend_table(factor, np.arange(256))
        w_mid, w_side = np.float32(5.0 / 13.0), np.float32(1.0 / 13.0)
        for y in range(H):
            for x in range(W):
                for c in range(3):
                    if y == 0 or x == 0 or y == H - 1 or x == W - 1:
                        dst[y, x, c] = src[y, x, c]  # ImageFilter keeps the border; blending it is a no-op
                        continue
                    s = np.float32(0.0)
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            w = w_mid if (dy == 0 and dx == 0) else w_side
                            s += w * np.float32(src[y + dy, x + dx, c])
                    smooth = 0 if s <= 0 else (255 if s >= 255 else int(s + np.float32(0.5)))
                    dst[y, x, c] = t[smooth, src[y, x, c]]


# --- geometric ops: Image.transform(AFFINE) with PIL's filters ------------------------------------

@njit(cache=True, nogil=True)
def _cubic(v1, v2, v3, v4, d):
    # PIL Geometry.c BICUBIC (a = -1)
    p1 = v2
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


@njit(cache=True, nogil=True)
def _cubic_row(src, r, x0, x1, x2, x3, ch, dx):
    return _cubic(np.float64(src[r, x0, ch]), np.float64(src[r, x1, ch]), np.float64(src[r, x2, ch]),
                  np.float64(src[r, x3, ch]), dx)


@njit(cache=True, nogil=True)
def _cubic_1d_row(src, dst, y, x, yi, xi, dx, W):
    # dy == 0: BICUBIC(v1..v4, 0) = v2, the row floor(yin) = y, always in range.
    x0 = min(max(xi - 1, 0), W - 1)
    x1 = min(max(xi, 0), W - 1)
    x2 = min(max(xi + 1, 0), W - 1)
    x3 = min(max(xi + 2, 0), W - 1)
    for ch in range(3):
        dst[y, x, ch] = _clip8_trunc(_cubic_row(src, yi, x0, x1, x2, x3, ch, dx))


@njit(cache=True, nogil=True)
def _cubic_1d_col(src, dst, y, x, yi, xi, dy, W, H):
    # dx == 0: each row's BICUBIC(..., 0) is its pixel at column floor(xin) = x (clamped as PIL).
    c = min(max(xi, 0), W - 1)
    r0 = min(max(yi - 1, 0), H - 1)
    for ch in range(3):
        v1 = np.float64(src[r0, c, ch])
        v2 = np.float64(src[yi, c, ch]) if 0 <= yi < H else v1
        v3 = np.float64(src[yi + 1, c, ch]) if 0 <= yi + 1 < H else v2
        v4 = np.float64(src[yi + 2, c, ch]) if 0 <= yi + 2 < H else v3
        dst[y, x, ch] = _clip8_trunc(_cubic(v1, v2, v3, v4, dy))


@njit(cache=True, nogil=True)
def _clip8_trunc(v):
    if v <= 0.0:
        return np.uint8(0)
    if v >= 255.0:
        return np.uint8(255)
    return np.uint8(int(v))


@njit(cache=True, nogil=True)
def _affine(src, dst, a, b, c, d, e, f, fill, bilinear):
    # Output pixel centre (x + .5, y + .5) maps to input (a x + b y + c, d x + e y + f); outside the
    # input it keeps the fill colour; inside, PIL's filter with clamped columns and rows that repeat
    # the last one in range (Geometry.c BICUBIC_BODY / BILINEAR_BODY).
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            xo = x + 0.5
            yo = y + 0.5
            xin = a * xo + b * yo + c
            yin = d * xo + e * yo + f
            if xin < 0.0 or xin >= W or yin < 0.0 or yin >= H:
                for ch in range(3):
                    dst[y, x, ch] = fill[ch]
                continue
            xin -= 0.5
            yin -= 0.5
            xi = int(math.floor(xin))
            yi = int(math.floor(yin))
            dx = xin - xi
            dy = yin - yi
            if bilinear:
                x0 = min(max(xi, 0), W - 1)
                x1 = min(max(xi + 1, 0), W - 1)
                r0 = min(max(yi, 0), H - 1)
                for ch in range(3):
                    v1 = src[r0, x0, ch] + (np.float64(src[r0, x1, ch]) - src[r0, x0, ch]) * dx
                    if 0 <= yi + 1 < H:
                        v2 = src[yi + 1, x0, ch] + (np.float64(src[yi + 1, x1, ch]) - src[yi + 1, x0, ch]) * dx
                    else:
                        v2 = v1
                    dst[y, x, ch] = _clip8_trunc(v1 + (v2 - v1) * dy)
                continue
            if dy == 0.0:  # shear / translate along x: one row, as PIL's v = p1 = the middle row
                _cubic_1d_row(src, dst, y, x, yi, xi, dx, W)
                continue
            if dx == 0.0:  # along y: one column of each row, likewise
                _cubic_1d_col(src, dst, y, x, yi, xi, dy, W, H)
                continue
            xi -= 1
            yi -= 1
            x0 = min(max(xi, 0), W - 1)
            x1 = min(max(xi + 1, 0), W - 1)
            x2 = min(max(xi + 2, 0), W - 1)
            x3 = min(max(xi + 3, 0), W - 1)
            r0 = min(max(yi, 0), H - 1)
            for ch in range(3):
                v1 = _cubic_row(src, r0, x0, x1, x2, x3, ch, dx)
                v2 = _cubic_row(src, yi + 1, x0, x1, x2, x3, ch, dx) if 0 <= yi + 1 < H else v1
                v3 = _cubic_row(src, yi + 2, x0, x1, x2, x3, ch, dx) if 0 <= yi + 2 < H else v2
                v4 = _cubic_row(src, yi + 3, x0, x1, x2, x3, ch, dx) if 0 <= yi + 3 < H else v3
                dst[y, x, ch] = _clip8_trunc(_cubic(v1, v2, v3, v4, dy))


@njit(cache=True, nogil=True)
def _rotation(degrees, W, H):
    # Image.rotate(expand=False): the inverse rotation about the centre, as an affine matrix.
    angle = -math.radians(degrees % 360.0)
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = W / 2.0, H / 2.0
    return ca, sa, ca * -cx + sa * -cy + cx, -sa, ca, -sa * -cx + ca * -cy + cy


# --- one op, one image ----------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def op_arg(op, magnitude, negate, translate_pct):
    """timm's level -> argument mapping (auto_augment.LEVEL_TO_ARG) for op id `op`."""
    level = magnitude / _LEVEL_DENOM
    sign = -1.0 if negate else 1.0
    if op == 3:
        return sign * level * 30.0
    if op == 4:
        return 4.0 - int(level * 4)
    if op == 5:
        return 256.0 - min(256, int(level * 256))
    if op == 6:
        return float(min(128, int(level * 110)))
    if 7 <= op <= 10:
        return max(0.1, 1.0 + sign * level * 0.9)
    if op == 11 or op == 12:
        return sign * level * 0.3
    if op == 13 or op == 14:
        return sign * level * translate_pct
    if op == 15:
        return float(int(level * 4))
    if op == 16:
        return float(min(256, int(level * 256)))
    if 17 <= op <= 20:
        return level * 1.8 + 0.1
    return 0.0


@njit(cache=True, nogil=True)
def apply_op(op, arg, src, dst, fill, bilinear):
    """Apply op `op` with argument `arg` (see op_arg) to src, into dst (same shape, not src)."""
    H, W, _ = src.shape
    if op == 0:
        _apply_lut(src, dst, _autocontrast_lut(src))
    elif op == 1:
        _apply_lut(src, dst, _equalize_lut(src))
    elif op == 2:
        _apply_lut(src, dst, _point_lut(0, 0.0))
    elif op == 4 or op == 15:
        _apply_lut(src, dst, _point_lut(1, arg))
    elif op == 5 or op == 16:
        _apply_lut(src, dst, _point_lut(2, arg))
    elif op == 6:
        _apply_lut(src, dst, _point_lut(3, arg))
    elif 7 <= op <= 10:
        _enhance(src, dst, op - 7, arg)
    elif 17 <= op <= 20:
        _enhance(src, dst, op - 17, arg)
    elif op == 3:
        if arg % 360.0 == 0.0:  # Image.rotate returns a copy
            dst[:] = src
        else:
            a, b, c, d, e, f = _rotation(arg, W, H)
            _affine(src, dst, a, b, c, d, e, f, fill, bilinear)
    elif op == 11:
        _affine(src, dst, 1.0, arg, 0.0, 0.0, 1.0, 0.0, fill, bilinear)
    elif op == 12:
        _affine(src, dst, 1.0, 0.0, 0.0, arg, 1.0, 0.0, fill, bilinear)
    elif op == 13:
        _affine(src, dst, 1.0, 0.0, arg * W, 0.0, 1.0, 0.0, fill, bilinear)
    elif op == 14:
        _affine(src, dst, 1.0, 0.0, 0.0, 0.0, 1.0, arg * H, fill, bilinear)
    else:
        dst[:] = src


@njit(cache=True, nogil=True)
def draw_layer(key, layer, num_ops, prob, magnitude, mstd, mmax):
    """(op index, applied, magnitude, negate) of layer `layer` of one image, from its key."""
    k = 8 * layer
    choice = min(int(uniform(key, k) * num_ops), num_ops - 1)
    applied = prob >= 1.0 or uniform(key, k + 1) <= prob  # timm skips when random() > prob
    m = magnitude
    if mstd > 0:
        m = gauss(key, k + 2, magnitude, mstd)  # draws k+2, k+3
    m = max(0.0, min(m, mmax))
    negate = uniform(key, k + 4) > 0.5  # timm's _randomly_negate
    return choice, applied, m, negate


@njit(cache=True, nogil=True)
def rand_augment_image(src, tmp, dst, key, op_ids, num_layers, prob, magnitude, mstd, mmax, translate_pct,
                       fill, bilinear):
    """RandAugment one HWC uint8 image src into dst (tmp: scratch of the same shape)."""
    applied = 0
    for layer in range(num_layers):
        choice, use, m, negate = draw_layer(key, layer, len(op_ids), prob, magnitude, mstd, mmax)
        if not use:
            continue
        op = op_ids[choice]
        arg = op_arg(op, m, negate, translate_pct)
        if applied == 0:
            apply_op(op, arg, src, dst, fill, bilinear)
        elif applied % 2 == 1:
            apply_op(op, arg, dst, tmp, fill, bilinear)
        else:
            apply_op(op, arg, tmp, dst, fill, bilinear)
        applied += 1
    if applied == 0:
        dst[:] = src
    elif applied % 2 == 0:
        dst[:] = tmp
