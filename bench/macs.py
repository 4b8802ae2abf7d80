"""Multiply-adds per image (GMACs) of the models the benchmarks time, as fvcore counts them
(pipeline.models.flops.count_gflops, the convention of the paper's tables), or, on a machine
without fvcore (the lent GPU machines have none), the same count cached below.

torch's own FlopCounterMode is no substitute: it leaves out `scaled_dot_product_attention` on the
CPU and counts a depthwise convolution's weight gradient as a dense one's. The cache is made by
`python bench/macs.py` and held to fvcore by tests/test_gpu_smoke.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# (timm name, input side) -> fvcore multiply-adds of one image, in G; `python bench/macs.py` prints it
CACHED_GMACS = {
    ("hiri_vit_s", 448): 5.0204,
    ("pvt_v2_b2", 224): 4.0458,
    ("swin_tiny_patch4_window7_224", 224): 4.5092,
}


def gmacs(model: torch.nn.Module, name: str, img_size: int) -> tuple[float | None, str]:
    """(GMACs of one image, where the number comes from): fvcore where it is installed, else the
    cache, else (None, why)."""
    try:
        from pipeline.models.flops import count_gflops
    except ImportError:  # fvcore is not installed
        if (name, img_size) in CACHED_GMACS:
            return CACHED_GMACS[(name, img_size)], "fvcore count cached in bench/macs.py (no fvcore here)"
        return None, f"no fvcore here and no cached count for {name}@{img_size} in bench/macs.py"
    return count_gflops(model, img_size), "fvcore"


def main() -> None:
    import timm

    import pipeline.models  # noqa: F401  (registers hiri_vit_*)
    from pipeline.models.flops import count_gflops

    print("CACHED_GMACS = {")
    for name, res in CACHED_GMACS:
        kwargs = {"img_size": res} if name.startswith("hiri") else {}
        print(f"    ({name!r}, {res}): {count_gflops(timm.create_model(name, **kwargs), res):.4f},")
    print("}")


if __name__ == "__main__":
    main()
