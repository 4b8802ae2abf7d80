"""Compile the FFCV loaders' numba kernels into numba's on-disk cache, once per install.

    python -m pipeline.data.warm_cache          # scripts/setup.sh runs it

Our augmentation kernels (seeding, RandAugment, the crop and erase operations) are compiled with
`cache=True`: the first process that runs them compiles them (about 15 s here) and every later
process loads them. Without this step that first process is the user's first training job. It
runs the training and evaluation loaders of params.yaml for one batch on a tiny generated set,
so the kernels are compiled with exactly the types the loaders pass them. What stays per
process is FFCV's own pipeline code, generated per loader and not cacheable: it calls
RandAugment through a cached C pointer (randaugment.rand_augment_c) so that compiling it does not
compile RandAugment again (about 2 s to the first batch with a warm cache; docs/data.md).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import BuiltinDataParams, load_params
from pipeline.data.builtin import generate, layout
from pipeline.data.convert import convert
from pipeline.data.loaders import build_train_loader, build_val_loader
from pipeline.data.sources import Sources

SIDE = 64  # the tiny set's beton side: the kernels' types do not depend on the image size


def warm(params_path: str | Path = "params.yaml") -> float:
    """Run one batch of each FFCV loader of `params_path`; return the seconds it took."""
    t0 = time.monotonic()
    params = load_params(params_path)
    with tempfile.TemporaryDirectory(prefix="hiri-warm-cache-") as tmp:
        tmp = Path(tmp)
        tiny = BuiltinDataParams(num_classes=2, train_per_class=4, val_per_class=2, v2_per_class=1,
                                 min_side=SIDE, max_side=SIDE + 16)
        generate(tiny, tmp / "source", workers=1)
        folders = layout(tmp / "source")
        # the configured JPEG/raw mix, so that both of the decoder's paths are compiled
        cfg = params.data.convert.model_copy(update={"max_sides": [SIDE], "num_workers": 1})
        convert(Sources(folders["train"], folders["val"], folders["v2"]), tmp / "ffcv", cfg,
                log=lambda *_: None)
        res = int(SIDE * params.data.loader.val_crop_pct)  # fits the tiny beton at the configured crop ratio
        with build_train_loader(params, res, 4, ffcv_dir=tmp / "ffcv", backend="ffcv", num_workers=1) as batches:
            next(iter(batches))
        with build_val_loader(params, res, 4, ffcv_dir=tmp / "ffcv", backend="ffcv", num_workers=1) as batches:
            next(iter(batches))
    return time.monotonic() - t0


def main() -> int:
    seconds = warm(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    print(f"warm_cache: the FFCV loaders' numba kernels are compiled and cached ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
