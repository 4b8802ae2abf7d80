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

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import carray, cfunc, types

from pipeline.data.seeding import gauss, kernel, uniform

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

@kernel
def _histogram(src):
    h = np.zeros((3, 256), dtype=np.int64)
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            for c in range(3):
                h[c, src[y, x, c]] += 1
    return h


@kernel
def _apply_lut(src, dst, lut):
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            for c in range(3):
                dst[y, x, c] = lut[c, src[y, x, c]]


@kernel
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


@kernel
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


@kernel
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

@kernel
def _blend(degenerate, value, alpha):
    # Pillow's ImagingBlend: float32 interpolation, truncated; clipped when extrapolating.
    t = np.float32(degenerate) + np.float32(alpha) * (np.float32(value) - np.float32(degenerate))
    if t <= 0.0:
        return np.uint8(0)
    if t >= 255.0:
        return np.uint8(255)
    return np.uint8(int(t))


@kernel
def _luma(r, g, b):
    # Pillow's RGB -> L: ITU-R 601-2 weights in 16-bit fixed point, rounded.
    return (np.int64(r) * 19595 + np.int64(g) * 38470 + np.int64(b) * 7471 + 0x8000) >> 16


@kernel
def _blend_table(factor, rows):
    # _blend for every (degenerate, value) pair: the per-pixel work becomes one look-up, the
    # numbers stay Pillow's. rows: the degenerate values needed (all 256, or one).
    t = np.empty((256, 256), dtype=np.uint8)
    for d in rows:
        for v in range(256):
            t[d, v] = _blend(d, v, factor)
    return t


@kernel
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
        _sharpness(src, dst, factor)


@kernel
def _sharpness(src, dst, factor):
    # ImageEnhance.Sharpness: _blend with ImageFilter.SMOOTH, the 3 x 3 kernel (1 1 1, 1 5 1,
    # 1 1 1) / 13 that Pillow sums in float32 and rounds (+ .5, truncated), border pixels kept
    # (blending a pixel with itself is a no-op). That float sum is k / 13 for the integer
    # k = 3 x 3 box sum + 4 x centre, within 2e-4 (9 float32 products and sums below 256), and
    # k / 13 + .5 is never nearer than 1/26 to an integer, so Pillow's rounding is exactly
    # floor((2 k + 13) / 26): integer arithmetic over whole rows (box sums as column sums of 3
    # rows, then 3 of those), and the blend in float32 as _blend does it, loops LLVM vectorises.
    H, W, _ = src.shape
    img = np.ascontiguousarray(src)
    alpha = np.float32(factor)
    n = 3 * W
    cols = np.empty(n, dtype=np.int32)
    row = np.empty(n, dtype=np.int32)
    for y in range(H):
        mid = img[y].reshape(-1)
        for j in range(n):
            row[j] = mid[j]
        if 0 < y < H - 1:
            up, down = img[y - 1].reshape(-1), img[y + 1].reshape(-1)
            for j in range(n):
                cols[j] = np.int32(up[j]) + np.int32(mid[j]) + np.int32(down[j])
            for j in range(n - 6):  # the value j + 3 of the row (pixel x + 1, channel c) and its
                v = row[j + 3]      # neighbours j and j + 6 (pixels x and x + 2)
                k = cols[j] + cols[j + 3] + cols[j + 6] + 4 * v
                # floor((2 k + 13) / 26) as a multiply and shift, exact for 2 k + 13 <= 6643 (all k
                # checked): numba's floor division keeps Python's sign rule and does not vectorise
                smooth = ((2 * k + 13) * 40330) >> 20
                t = np.float32(smooth) + alpha * (np.float32(v) - np.float32(smooth))
                row[j + 3] = np.int32(min(max(t, np.float32(0.0)), np.float32(255.0)))
        for x in range(W):
            for ch in range(3):
                dst[y, x, ch] = row[3 * x + ch]


# --- geometric ops: Image.transform(AFFINE) with PIL's filters ------------------------------------
#
# Pillow (Geometry.c, ImagingGenericTransform + affine_transform + bicubic_filter32RGB) maps the
# centre of output pixel (x, y) to xin = a (x + .5) + b (y + .5) + c, yin = d (x + .5) + e (y + .5)
# + f; outside the image the pixel keeps the fill colour; inside, a cubic (a = -1) in double along
# each of the 4 rows around the point, then one down the column, clipped and truncated to uint8.
# Taps beyond the edge repeat the edge: columns are clamped, rows repeat the last row in range,
# which for the rows reachable from a point inside (floor(yin - .5) in [-1, H - 1]) is the same as
# clamping them. The code below does the same double operations in the same order (no fastmath:
# no fused multiply-adds), so the bytes stay Pillow's; what changes is the organisation:
#   - per output row, the pixels inside form one interval (xin and yin are rounded affine
#     functions of x, hence monotone), so the fill is a plain store and the rest has no test;
#   - the taps come from a copy of the image padded with 2 edge pixels on each side (no clamping)
#     that packs a pixel's 3 channels into one uint32 (a third of the loads), gathered per row
#     into contiguous arrays, then the cubics run over those arrays in loops LLVM vectorises;
#   - a cubic at offset 0 returns its second tap exactly, so where every dy of a row is 0 (shear
#     and translation along x) only that row's 4 taps are read, and where every dx is 0 (along y)
#     one tap per row; a cubic's taps are integers there, so its coefficients are integers too.

_PAD = 2  # floor(xin - .5) - 1 >= -2 and + 3 <= W + 1 for a point inside


@kernel
def _packed(src):
    """src (H, W, 3) as (H + 4, W + 4) uint32 pixels R | G << 8 | B << 16, edges repeated outwards."""
    H, W, _ = src.shape
    out = np.empty((H + 2 * _PAD, W + 2 * _PAD), dtype=np.uint32)
    for y in range(H + 2 * _PAD):
        s = src[min(max(y - _PAD, 0), H - 1)]
        o = out[y]
        for x in range(W):
            o[x + _PAD] = np.uint32(s[x, 0]) | (np.uint32(s[x, 1]) << 8) | (np.uint32(s[x, 2]) << 16)
        for x in range(_PAD):
            o[x] = o[_PAD]
            o[W + _PAD + x] = o[W + _PAD - 1]
    return out


@kernel
def _channel(p, shift):
    return np.int32((p >> shift) & np.uint32(255))


@kernel
def _cubic_int(q1, q2, q3, q4, d):
    # Geometry.c BICUBIC on integer taps: p1..p4 are exact integers, in double as in Pillow.
    p2 = np.float64(q3 - q1)
    p3 = np.float64(2 * (q1 - q2) + q3 - q4)
    p4 = np.float64(q2 - q1 - q3 + q4)
    return np.float64(q2) + d * (p2 + d * (p3 + d * p4))


@kernel
def _cubic(v1, v2, v3, v4, d):
    # Geometry.c BICUBIC on doubles, in Pillow's order of operations.
    p1 = v2
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


@kernel
def _clip8_trunc(v):
    # bicubic_filter32RGB's store: 0 at or below 0, 255 at or above, else truncated
    return np.int32(min(max(v, 0.0), 255.0))


@kernel
def _row_cubic(taps, r, i, shift, d):
    # the cubic along one source row: taps[r:r + 4, i], channel `shift`
    return _cubic_int(_channel(taps[r, i], shift), _channel(taps[r + 1, i], shift),
                      _channel(taps[r + 2, i], shift), _channel(taps[r + 3, i], shift), d)


# The two filters below write one channel at a time into contiguous int32 rows: a loop over
# pixels with no inner loop and no strided uint8 store is what LLVM vectorises (4x faster).

@kernel
def _bicubic_16(taps, dx, dy, res, n):
    # res[ch, i]: 4 row cubics, then the column cubic.
    for ch in range(3):
        shift, r = np.uint32(8 * ch), res[ch]
        for i in range(n):
            r[i] = _clip8_trunc(_cubic(_row_cubic(taps, 0, i, shift, dx[i]), _row_cubic(taps, 4, i, shift, dx[i]),
                                       _row_cubic(taps, 8, i, shift, dx[i]), _row_cubic(taps, 12, i, shift, dx[i]),
                                       dy[i]))


@kernel
def _bicubic_4(taps, d, res, n):
    # res[ch, i]: one cubic on integer taps (along the other axis the offset is 0: that cubic is
    # its second tap).
    for ch in range(3):
        shift, r = np.uint32(8 * ch), res[ch]
        for i in range(n):
            r[i] = _clip8_trunc(_row_cubic(taps, 0, i, shift, d[i]))


@kernel
def _affine_bicubic(src, dst, a, b, c, d, e, f, fill):
    H, W, _ = src.shape
    pixels = _packed(src)
    flat = pixels.reshape(-1)
    stride = W + 2 * _PAD
    xin = np.empty(W)
    yin = np.empty(W)
    dx = np.empty(W)
    dy = np.empty(W)
    at = np.empty(W, dtype=np.int64)  # flat index of the pixel's first tap (row yi - 1, column xi - 1)
    taps = np.empty((16, W), dtype=np.uint32)
    res = np.empty((3, W), dtype=np.int32)
    for y in range(H):
        yo = y + 0.5
        for x in range(W):
            xo = x + 0.5
            xin[x] = a * xo + b * yo + c
            yin[x] = d * xo + e * yo + f
        lo = 0
        while lo < W and not (0.0 <= xin[lo] < W and 0.0 <= yin[lo] < H):
            lo += 1
        hi = W
        while hi > lo and not (0.0 <= xin[hi - 1] < W and 0.0 <= yin[hi - 1] < H):
            hi -= 1
        out = dst[y]
        for x in range(lo):
            for ch in range(3):
                out[x, ch] = fill[ch]
        for x in range(hi, W):
            for ch in range(3):
                out[x, ch] = fill[ch]
        n = hi - lo
        if n == 0:
            continue
        nonzero_dx, nonzero_dy = 0, 0
        for i in range(n):
            xs = xin[lo + i] - 0.5
            ys = yin[lo + i] - 0.5
            xf = math.floor(xs)
            yf = math.floor(ys)
            dx[i] = xs - xf
            dy[i] = ys - yf
            at[i] = (yf - 1 + _PAD) * stride + xf - 1 + _PAD
            nonzero_dx += dx[i] != 0.0
            nonzero_dy += dy[i] != 0.0
        if nonzero_dy == 0:  # one source row per pixel
            for i in range(n):
                k = at[i] + stride  # the point's own row
                for j in range(4):
                    taps[j, i] = flat[k + j]
            _bicubic_4(taps, dx, res, n)
        elif nonzero_dx == 0:  # one source column
            for i in range(n):
                k = at[i] + 1  # the point's own column
                for r in range(4):
                    taps[r, i] = flat[k + r * stride]
            _bicubic_4(taps, dy, res, n)
        else:
            for i in range(n):
                k = at[i]
                for r in range(4):
                    for j in range(4):
                        taps[4 * r + j, i] = flat[k + r * stride + j]
            _bicubic_16(taps, dx, dy, res, n)
        for i in range(n):
            for ch in range(3):
                out[lo + i, ch] = res[ch, i]


@kernel
def _affine_bilinear(src, dst, a, b, c, d, e, f, fill):
    # Geometry.c BILINEAR_BODY: clamped columns, rows that repeat the last one in range.
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


@kernel
def _affine(src, dst, a, b, c, d, e, f, fill, bilinear):
    """Image.transform(size, AFFINE, (a, b, c, d, e, f), resample, fillcolor=fill) of src into dst."""
    if bilinear:
        _affine_bilinear(src, dst, a, b, c, d, e, f, fill)
    else:
        _affine_bicubic(src, dst, a, b, c, d, e, f, fill)


@kernel
def _round15(v):
    # Python's round(v, 15) (correctly rounded, ties to even), for |v| <= 1: rint(v * 1e15) is
    # right unless the product fell on a half-integer, where the exact product's rounding error
    # (Dekker's two-product, exact without FMA) decides.
    p = v * 1e15
    n = np.rint(p)
    if abs(p - n) == 0.5:
        split = 134217729.0  # 2**27 + 1
        t = split * v
        vh = t - (t - v)
        vl = v - vh
        t = split * 1e15
        sh = t - (t - 1e15)
        sl = 1e15 - sh
        err = ((vh * sh - p) + vh * sl + vl * sh) + vl * sl
        if err > 0.0:
            n = p + 0.5
        elif err < 0.0:
            n = p - 0.5
    return n / 1e15


@kernel
def _rotation(degrees, W, H):
    # Image.rotate(expand=False): the inverse rotation about the centre, its cosine and sine
    # rounded to 15 decimals as Pillow rounds them.
    angle = -math.radians(degrees % 360.0)
    ca, sa = _round15(math.cos(angle)), _round15(math.sin(angle))
    cx, cy = W / 2.0, H / 2.0
    return ca, sa, ca * -cx + sa * -cy + 0.0 + cx, -sa, ca, -sa * -cx + ca * -cy + 0.0 + cy


# --- one op, one image ----------------------------------------------------------------------------

@kernel
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


@kernel
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


@kernel
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


@kernel
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


_U8P = types.CPointer(types.uint8)
_C_SIGNATURE = types.void(_U8P, _U8P, _U8P, types.int64, types.int64, types.uint64, types.CPointer(types.int64),
                          types.int64, types.int64, types.float64, types.float64, types.float64, types.float64,
                          types.float64, _U8P, types.boolean)


@functools.cache
def rand_augment_c():
    """`rand_augment_image` behind a C function pointer, for compiled callers: a numba `cfunc`,
    cached on disk like the kernels, built at the first call. Its `.ctypes` takes (src, tmp, dst
    as the data pointers of C-contiguous HxWx3 uint8 images, H, W, key, op_ids pointer, its
    length, num_layers, prob, magnitude, mstd, mmax, translate_pct, fill pointer, bilinear).

    Why: numba links a jitted callee's code into every caller and compiles it again there, with
    the caller. FFCV generates its pipeline function anew for every loader, so each training
    process spent about 8 s of LLVM on the 15 RandAugment ops before its first batch (2 cores).
    Called through this pointer the pipeline compiles in a fraction of a second, and the images
    are the same bytes (tests/test_randaugment.py)."""

    @cfunc(_C_SIGNATURE, cache=True, error_model="numpy")
    def rand_augment_pointers(src, tmp, dst, h, w, key, op_ids, num_ops, num_layers, prob, magnitude, mstd, mmax,
                              translate_pct, fill, bilinear):
        shape = (h, w, 3)
        rand_augment_image(carray(src, shape), carray(tmp, shape), carray(dst, shape), key, carray(op_ids, (num_ops,)),
                           num_layers, prob, magnitude, mstd, mmax, translate_pct, carray(fill, (3,)), bilinear)

    return rand_augment_pointers
