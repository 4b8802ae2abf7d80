"""Reading the conversion's manifest.json and choosing the beton set for a resolution."""
from __future__ import annotations

import json
import math
from pathlib import Path

MANIFEST = "manifest.json"  # written last by the conversion: present <=> it finished
MANIFEST_FORMAT = 1


class ManifestError(FileNotFoundError):
    """No usable manifest (conversion not run or not finished), or no beton for a request."""


def load_manifest(ffcv_dir: str | Path) -> dict:
    path = Path(ffcv_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: not found; the conversion has not finished there "
                            "(run `dvc repro convert_imagenet`, or `python -m stages.convert_imagenet`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}; "
                            "rerun the conversion")
    return manifest


def split_entry(manifest: dict, split: str, ffcv_dir: str | Path) -> dict:
    splits = manifest["splits"]
    if split not in splits:
        raise ManifestError(f"{Path(ffcv_dir) / MANIFEST}: no split {split!r} (have {sorted(splits)})")
    return splits[split]


def pick_max_side(available: list[int], resolution: int, crop_pct: float) -> int:
    """The smallest stored max side that serves `resolution` without upsampling a shrunk copy.

    Validation resizes the shorter side to resolution / crop_pct before cropping, so the stored
    copy must keep at least that many pixels: 448 at crop 0.875 needs 512, 768 needs 878.
    """
    need = math.ceil(resolution / crop_pct - 1e-6)
    fitting = sorted(s for s in available if s >= need)
    if not fitting:
        raise ManifestError(
            f"no beton set serves resolution {resolution}: it needs max side >= {need} "
            f"(= {resolution} / data.loader.val_crop_pct {crop_pct}), the conversion has {sorted(available)}; "
            f"add {need} or more to data.convert.max_sides and rerun `dvc repro convert_imagenet`")
    return fitting[0]


def beton_path(manifest: dict, split: str, resolution: int, crop_pct: float, ffcv_dir: str | Path) -> Path:
    entry = split_entry(manifest, split, ffcv_dir)
    side = pick_max_side([int(s) for s in entry["betons"]], resolution, crop_pct)
    path = Path(ffcv_dir) / entry["betons"][str(side)]
    if not path.is_file():
        raise ManifestError(f"{path}: listed in the manifest but missing; rerun the conversion")
    return path
