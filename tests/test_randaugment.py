"""The compiled RandAugment (pipeline.data.randaugment) against timm's own PIL ops, on photographs.

Per op at magnitude 9 (both signs where timm draws one), on scikit-image's sample photographs:
the mean absolute difference to timm's result must stay within the bound stated per op below:
1 grey level for the photometric ops (in practice 0 or a handful of pixels off by one: Pillow
truncates float results that we compute in the same precision), and for the geometric ops the
level of interpolation round-off (the same PIL bicubic kernel and coordinates, float order aside).
Then the draws: op choice, application, magnitude and sign over many images follow timm's
distribution.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from timm.data import auto_augment as aa  # noqa: E402

from pipeline.data.randaugment import (  # noqa: E402
    OP_IDS, RandAugmentSpec, apply_op, draw_layer, op_arg, rand_augment_image)
from pipeline.data.seeding import python_key  # noqa: E402
from pipeline.data.transforms import _posterize  # noqa: E402

FILL = (124, 116, 104)  # timm: ImageNet mean in 0-255, as create_transform passes it
MAGNITUDE = 9.0

# Mean absolute difference allowed, grey levels (0-255), per op: photometric 1, geometric 0.5.
BOUND = {
    "AutoContrast": 1.0, "Equalize": 1.0, "Invert": 1.0, "PosterizeIncreasing": 1.0, "SolarizeIncreasing": 1.0,
    "SolarizeAdd": 1.0, "ColorIncreasing": 1.0, "ContrastIncreasing": 1.0, "BrightnessIncreasing": 1.0,
    "SharpnessIncreasing": 1.0,
    "Rotate": 0.5, "ShearX": 0.5, "ShearY": 0.5, "TranslateXRel": 0.5, "TranslateYRel": 0.5,
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing", "ContrastIncreasing",
          "BrightnessIncreasing", "SharpnessIncreasing"}


@pytest.fixture(scope="module")
def photos():
    # Real photographs shipped inside scikit-image; one square, two not (W != H catches swapped axes).
    astronaut = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((224, 224), Image.Resampling.BICUBIC))
    return [astronaut, skimage_data.chelsea(), skimage_data.coffee()[::2, ::2].copy()]


def timm_op(name: str, img: np.ndarray, negate: bool) -> np.ndarray:
    hparams = dict(translate_const=100, img_mean=FILL, interpolation=Image.Resampling.BICUBIC)
    level_fn = aa.LEVEL_TO_ARG[name]
    saved = aa._randomly_negate
    aa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)
    try:
        args = level_fn(MAGNITUDE, hparams) if level_fn is not None else ()
    finally:
        aa._randomly_negate = saved
    fn = _posterize if name.startswith("Posterize") else aa.NAME_TO_OP[name]
    out = fn(Image.fromarray(img), *args, fillcolor=FILL, resample=Image.Resampling.BICUBIC)
    return np.asarray(out), args


def ours(name: str, img: np.ndarray, negate: bool):
    op = OP_IDS[name]
    arg = op_arg(op, MAGNITUDE, negate, 0.45)
    dst = np.empty_like(img)
    apply_op(op, arg, img, dst, np.array(FILL, dtype=np.uint8), False)
    return dst, arg


@pytest.mark.parametrize("name", list(BOUND))
def test_op_matches_timm(name, photos):
    for negate in ((False, True) if name in SIGNED else (False,)):
        for img in photos:
            want, args = timm_op(name, img, negate)
            got, arg = ours(name, img, negate)
            if args:
                assert arg == pytest.approx(float(args[0]), abs=1e-12), f"{name}: level argument {arg} vs timm's {args}"
            diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
            assert diff.mean() <= BOUND[name], (f"{name} (negate={negate}) on {img.shape}: mean |diff| "
                                                f"{diff.mean():.3f} > {BOUND[name]}, max {diff.max()}")
            if name not in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
                assert diff.max() <= 1, f"{name}: a pixel is off by {diff.max()} grey levels"


def test_spec_read_from_timm_recipe():
    from pipeline.config import LoaderParams
    from pipeline.data.transforms import rand_augment

    spec = RandAugmentSpec.from_timm(rand_augment(LoaderParams(), 224).transforms[0])
    assert [n for n, i in OP_IDS.items() if i in spec.op_ids] == list(aa._RAND_INCREASING_TRANSFORMS)
    assert (spec.num_layers, spec.prob, spec.magnitude, spec.magnitude_std, spec.magnitude_max) == (2, 0.5, 9, 0.5, 10)
    assert spec.fill == FILL and not spec.bilinear


def test_draw_histogram_follows_timm():
    # timm: 2 ops with replacement, uniform over 15; each applied with p 0.5; magnitude N(9, 0.5)
    # clipped to [0, 10]; sign flipped with p 0.5. 20000 images, 40000 layers.
    n, ops = 20_000, 15
    draws = [draw_layer(np.uint64(python_key(0, 0, i, 3)), layer, ops, 0.5, 9.0, 0.5, 10.0)
             for i in range(n) for layer in range(2)]
    choice = np.array([d[0] for d in draws])
    counts = np.bincount(choice, minlength=ops)
    expected = len(draws) / ops
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 36.1, f"op choice not uniform: chi2 {chi2:.1f} (14 dof, p=0.001 at 36.1), counts {counts}"
    applied = np.mean([d[1] for d in draws])
    assert abs(applied - 0.5) < 0.01, applied
    m = np.array([d[2] for d in draws])
    ref = np.clip(np.random.default_rng(0).normal(9.0, 0.5, 400_000), 0.0, 10.0)  # timm: gauss, then clip
    assert abs(m.mean() - ref.mean()) < 0.01 and abs(m.std() - ref.std()) < 0.01 and m.max() <= 10.0
    assert abs(np.mean([d[3] for d in draws]) - 0.5) < 0.01


def test_rand_augment_image_is_a_function_of_its_key(photos):
    img = photos[0]
    op_ids = np.array(sorted(set(OP_IDS.values()) - set(range(15, 21))), dtype=np.int64)
    fill = np.array(FILL, dtype=np.uint8)

    def run(key):
        dst, tmp = np.empty_like(img), np.empty_like(img)
        rand_augment_image(img, tmp, dst, np.uint64(key), op_ids, 2, 0.5, 9.0, 0.5, 10.0, 0.45, fill, False)
        return dst

    a, b = run(python_key(1, 2, 3, 3)), run(python_key(1, 2, 3, 3))
    assert np.array_equal(a, b)
    outs = [run(python_key(1, 2, i, 3)) for i in range(8)]
    assert sum(not np.array_equal(o, img) for o in outs) >= 4, "RandAugment left most images unchanged"


def test_the_c_pointer_entry_gives_the_same_images(photos):
    """The FFCV pipeline calls RandAugment through `rand_augment_c` (a numba cfunc, so that FFCV's
    per-loader compilation does not compile RandAugment again): byte for byte the kernel's result."""
    import ctypes

    from pipeline.data.randaugment import rand_augment_c

    augment = rand_augment_c().ctypes
    op_ids = np.array(sorted(set(OP_IDS.values()) - set(range(15, 21))), dtype=np.int64)
    fill = np.array(FILL, dtype=np.uint8)
    u8 = ctypes.POINTER(ctypes.c_uint8)
    for n, img in enumerate(photos[:2]):
        img = np.ascontiguousarray(img)
        for i in range(12):
            key = python_key(0, 1, 100 * n + i, 3)
            want, tmp = np.empty_like(img), np.empty_like(img)
            rand_augment_image(img, tmp, want, np.uint64(key), op_ids, 2, 0.5, 9.0, 0.5, 10.0, 0.45, fill, i % 2 == 1)
            got, tmp = np.empty_like(img), np.empty_like(img)
            augment(img.ctypes.data_as(u8), tmp.ctypes.data_as(u8), got.ctypes.data_as(u8), img.shape[0],
                    img.shape[1], key, op_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), len(op_ids), 2, 0.5,
                    9.0, 0.5, 10.0, 0.45, fill.ctypes.data_as(u8), i % 2 == 1)
            assert np.array_equal(got, want), (n, i)
