"""Loaders: shapes, normalisation, per-image augmentation, and both backends agreeing."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DataParams, LoaderParams
from pipeline.data.convert import Sources, convert
from pipeline.data.loaders import build_train_loader, build_val_loader
from tests.data_fixtures import tiny_builtin, tiny_convert_cfg

RES = 56  # served by max side 64 (56 / 0.875 = 64)


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    """Two classes whose train images are all the same picture: any difference is augmentation."""
    root = tmp_path_factory.mktemp("same")
    for c, wnid in enumerate(("n0", "n1")):
        y, x = np.mgrid[0:80, 0:96]
        pic = np.stack([(x * 3 + c * 90) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, "JPEG", quality=95)
        for split, n in (("train", 16), ("val", 4)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / wnid / f"{wnid}_{i}.JPEG").write_bytes(buf.getvalue())
    out = root / "ffcv"
    convert(Sources(root / "train", root / "val"), out, tiny_convert_cfg(compress_probability=0.0))
    return out


@pytest.fixture(scope="module")
def tiny_betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny_builtin(root / "src", classes=3, train=6, val=4, v2=2)
    src = Sources(root / "src/imagenet/train", root / "src/imagenet/val", root / "src/imagenet_v2")
    convert(src, root / "ffcv", tiny_convert_cfg())
    return root / "ffcv"


def data(**loader) -> DataParams:
    return DataParams(loader=LoaderParams(num_workers=1, **loader))


def distinct(images: torch.Tensor) -> int:
    return len({x.numpy().tobytes() for x in images})


def distinct_within_classes(images: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(distinct outputs, inputs) summed over classes: inputs of one class are one picture."""
    return (sum(distinct(images[labels == c]) for c in labels.unique()), len(labels))


def test_ffcv_train_batch_shape_dtype_normalised(tiny_betons):
    batches = build_train_loader(data(), RES, 8, ffcv_dir=tiny_betons, backend="ffcv")
    assert (batches.num_images, batches.num_classes, len(batches)) == (18, 3, 2)
    x, y = next(iter(batches))
    assert x.shape == (8, 3, RES, RES) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.long and 0 <= y.min() and y.max() < 3
    # Normalised: roughly zero-centred with unit spread, not 0..255 or 0..1.
    assert -1.5 < x.mean() < 1.5 and 0.3 < x.std() < 2.5


def test_ffcv_augments_each_image_on_its_own(same_images):
    x, y = next(iter(build_train_loader(data(), RES, 16, ffcv_dir=same_images, backend="ffcv")))
    assert distinct_within_classes(x, y) == (16, 16)


def test_ffcv_randaugment_draws_per_image(same_images):
    # Crop, flip and erasing fixed: only RandAugment can make identical inputs differ.
    fixed = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, re_prob=0.0)
    x, y = next(iter(build_train_loader(data(**fixed), RES, 16, ffcv_dir=same_images, backend="ffcv")))
    got, n = distinct_within_classes(x, y)
    assert got >= n - 4  # a few RA draws may coincide (e.g. the same op at a rounded magnitude)
    x0, y0 = next(iter(build_train_loader(data(auto_augment=None, **fixed), RES, 16, ffcv_dir=same_images,
                                          backend="ffcv")))
    # The control: without RandAugment this pipeline maps one picture to one output.
    assert distinct_within_classes(x0, y0)[0] == len(y0.unique())


def test_torchvision_train_batches_match_ffcv_format(tiny_betons):
    x, y = next(iter(build_train_loader(data(), RES, 8, ffcv_dir=tiny_betons, backend="torchvision", num_workers=0)))
    assert x.shape == (8, 3, RES, RES) and x.dtype == torch.float32 and y.dtype == torch.long


def test_val_backends_agree_on_labels_and_pixels(tiny_betons):
    def collect(backend, split):
        b = build_val_loader(data(), RES, 5, split=split, ffcv_dir=tiny_betons, backend=backend, num_workers=0)
        xs, ys = zip(*[(x.clone(), y.clone()) for x, y in b])
        return torch.cat(xs), torch.cat(ys)

    for split, n in (("val", 12), ("v2", 6)):
        xf, yf = collect("ffcv", split)
        xt, yt = collect("torchvision", split)
        assert len(yf) == len(yt) == n
        assert torch.equal(yf, yt)
        # Same region, different resamplers (OpenCV INTER_AREA vs PIL bicubic) and FFCV's JPEG
        # re-encoding: close, not equal.
        assert (xf - xt).abs().mean() < 0.15


def test_a_failing_augmentation_raises_instead_of_hanging(same_images, monkeypatch):
    from pipeline.data import ffcv_ops

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(ffcv_ops, "erase_one", broken)
    with pytest.raises(ValueError, match="boom"):  # erasing runs in the consumer's thread now
        next(iter(build_train_loader(data(re_prob=1.0), RES, 8, ffcv_dir=same_images, backend="ffcv")))


def test_ffcv_normalises_and_erases_after_a_uint8_copy_as_the_cpu_pipeline_did(same_images):
    """The loader hands over uint8 NHWC batches with the sample indices (a quarter of float32's bytes
    to copy to the GPU); DeviceTail normalises and erases where the batch lands, channels_last: a
    float32 multiply then a subtraction (torch's arithmetic, as on the GPU), and erase_one's draws,
    bit for bit."""
    from pipeline.data.ffcv_ops import erase_one, normalization
    from pipeline.data.seeding import ERASE, python_key

    cfg = data(re_prob=0.5)
    batches = build_train_loader(cfg, RES, 8, ffcv_dir=same_images, backend="ffcv", seed=5)
    x, y = next(iter(batches))
    x, y = x.clone(), y.clone()
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    batches.tail = None  # now what the loader itself hands over, for the same epoch
    batches.set_epoch(0, 5)
    u8, tagged = next(iter(batches))
    assert u8.dtype == torch.uint8 and u8.shape == (8, RES, RES, 3) and tagged.shape == (8, 2)
    assert torch.equal(tagged[:, 0], y)
    scale, shift = (torch.from_numpy(v).view(1, 3, 1, 1) for v in normalization(cfg.loader.mean, cfg.loader.std))
    ref = u8.permute(0, 3, 1, 2).float() * scale - shift
    for i in range(8):
        erase_one(ref[i], python_key(5, 0, int(tagged[i, 1]), ERASE), 0.5, 1, mode="pixel")
    assert torch.equal(x, ref) and x.std() > 0.3  # and a real, normalised batch


def test_the_cpu_tail_reuses_a_batch_only_once_nobody_holds_it():
    """DeviceTail writes CPU batches into reused buffers (fresh 77 MB ones cost page faults every
    batch): a batch, or a view of it, that the consumer keeps is never written over; one it has
    let go of is reused."""
    from pipeline.data.ffcv_ops import DeviceTail
    from pipeline.data.seeding import EpochCell

    tail = DeviceTail((0.5,) * 3, (0.25,) * 3, 0.0, "pixel", 1, EpochCell(0, 0))
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    first = tail(images, [0, 1, 2, 3])
    kept, first_memory = first.clone(), first.data_ptr()
    second = tail(255 - images, [0, 1, 2, 3])  # `first` is held: a second buffer
    assert torch.equal(first, kept) and second.data_ptr() != first.data_ptr()
    view = second[1:3]
    del first, second
    third = tail(images, [0, 1, 2, 3])  # the first buffer is free again; the second is still viewed
    assert torch.equal(third, kept) and third.data_ptr() == first_memory
    assert torch.equal(view, (tail(255 - images, [0] * 4)[1:3])) and view.data_ptr() != third.data_ptr()
    held = [tail(images, [0] * 4) for _ in range(5)]  # a consumer that keeps everything
    assert len({h.data_ptr() for h in held}) == 5 and all(torch.equal(h, kept) for h in held)


# --- reproducibility: every draw from (seed, epoch, sample index) ----------------------------------

def epoch_batches_of(batches, epoch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches.set_epoch(epoch, seed)
    return [(x.clone(), y.clone()) for x, y in batches]  # FFCV reuses its buffers


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("backend", ["ffcv", "torchvision"])
def test_batches_depend_on_seed_epoch_and_index_only(tiny_betons, backend):
    import random

    def build(workers, seed):
        return build_train_loader(data(re_prob=0.5), RES, 6, ffcv_dir=tiny_betons, backend=backend,
                                  num_workers=workers, seed=seed)

    one = build(1, seed=3)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    run = [epoch_batches_of(one, e, 3) for e in (0, 1)]
    # The loader leaves the global generators alone: the training step's Mixup and drop-path
    # draw from them, seeded per epoch by the loop.
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert not same_batches(run[0], run[1]), "epochs 0 and 1 drew the same augmentations"
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        two = build(2, seed=3)
        # A resumed run starts at epoch 1 in a new process with another worker count: same batches.
        assert same_batches(epoch_batches_of(two, 1, 3), run[1])
        assert same_batches(epoch_batches_of(two, 0, 3), run[0])
        # FFCV sets torch's thread count to its worker count; the training step's must not follow it.
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert not same_batches(epoch_batches_of(build(1, seed=4), 0, 4), run[0]), "seed 4 gave seed 3's batches"


SCRIPT = """
import sys, time
t = time.perf_counter()
from pipeline.config import DataParams, LoaderParams
from pipeline.data.loaders import build_train_loader
b = build_train_loader(DataParams(loader=LoaderParams()), 56, 4, ffcv_dir=sys.argv[1], backend=sys.argv[2],
                       num_workers=2)
it = iter(b)
x, y = next(it)
if sys.argv[3] == "del":
    del it
print("took a batch", flush=True)
"""


@pytest.mark.parametrize("backend,how", [("ffcv", "keep"), ("ffcv", "del"), ("torchvision", "keep")])
def test_a_script_that_takes_one_batch_exits_at_once(tiny_betons, backend, how):
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_betons), backend, how], capture_output=True,
                         text=True, timeout=240, cwd=Path(__file__).resolve().parent.parent)
    waited = time.perf_counter() - t
    assert res.returncode == 0 and "took a batch" in res.stdout, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr[-2000:]
    # What remains after the batch is the interpreter's exit: compare with the whole run.
    assert waited < 120, f"{backend}: the script took {waited:.0f} s"


EVALUATION = """
import gc, sys
import numba
from pipeline.config import DataParams, LoaderParams
from pipeline.data.loaders import build_val_loader
for split in ("val", "v2"):  # as the training stage's final evaluation: a loader per split, two passes each
    batches = build_val_loader(DataParams(loader=LoaderParams()), 56, 4, split=split, ffcv_dir=sys.argv[1],
                               backend="ffcv", num_workers=2)
    for model in ("student", "teacher"):
        for x, y in batches:
            pass
del batches
gc.collect()
assert numba.uint8[::1].mutable, "numba's shared uint8[::1] type was made read-only"
print("evaluated", flush=True)
"""


@pytest.mark.slow
def test_dropping_ffcv_loaders_is_quiet(tiny_betons):
    """FFCV's page-cache reader used to flip numba's shared uint8[::1] type to read-only; dropping a
    loader then printed a KeyError from numba's finalizer (the end of every training stage)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", EVALUATION, str(tiny_betons)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0 and "evaluated" in res.stdout, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr[-2000:]


def test_close_and_context_manager_stop_the_epoch(tiny_betons):
    with build_train_loader(data(), RES, 6, ffcv_dir=tiny_betons, backend="torchvision", num_workers=2) as b:
        it = iter(b)
        next(it)
        workers = b._running.iterator._workers
        assert any(w.is_alive() for w in workers)
    assert b._running.iterator is None and not any(w.is_alive() for w in workers)


def test_warm_cache_compiles_every_kernel_the_ffcv_loaders_call(tmp_path):
    """scripts/setup.sh runs pipeline.data.warm_cache so that the first training job loads our
    numba kernels instead of compiling them; a second process then compiles none of ours."""
    import os
    import re
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    root = Path(__file__).resolve().parents[1]
    warm = subprocess.run([sys.executable, "-m", "pipeline.data.warm_cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr[-3000:]
    cached = {p.name.split("-")[0] for p in (tmp_path / "numba").rglob("*.nbi")}
    assert {"randaugment.rand_augment_image", "randaugment.rand_augment_c.locals.rand_augment_pointers",
            "ffcv_ops.random_crop", "ffcv_ops.flip_in_place", "ffcv_ops._normalize_nhwc",
            "seeding._mix"} <= cached, sorted(cached)
    # again, now with numba saying what it does with its cache: ours all loaded, none compiled
    again = subprocess.run([sys.executable, "-m", "pipeline.data.warm_cache"], cwd=root,
                           env={**env, "NUMBA_DEBUG_CACHE": "1"}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    ours = [line for line in again.stdout.splitlines() if re.search(r"/(randaugment|ffcv_ops|seeding)\.", line)]
    assert any("data loaded" in line for line in ours), again.stdout[-3000:]
    assert not [line for line in ours if "data saved" in line]
