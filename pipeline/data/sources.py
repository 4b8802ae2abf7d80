"""Where the images come from and where the betons go: the built-in set or real paths.

Profile `builtin` uses the generated set unless `data.imagenet` is set; profile `paper` needs
`data.imagenet` and `data.imagenet_v2` to point at real folders, and says which one is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params
from pipeline.data import builtin

# Stage outputs (dvc.yaml declares the same paths).
SOURCE_DIR = Path("data/source")  # prepare_data: the built-in set, or a pointer to real paths
FFCV_DIR = Path("data/ffcv")  # convert_imagenet: betons + manifest.json


def partial_dir(out: str | Path) -> Path:
    """Where a conversion into `out` keeps its unfinished betons unless told otherwise: beside
    `out`, so on its file system (finished betons are linked into `out`)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class Sources:
    """The folders the conversion reads: ImageNet's train/ and val/, ImageNet-V2 (optional)."""

    train: Path
    val: Path
    v2: Path | None = None


class SourceError(ValueError):
    """A configured dataset path is missing or wrong; the message names the params key."""


def uses_builtin(params: Params) -> bool:
    return params.data.imagenet is None


def resolve_sources(params: Params, source_dir: str | Path = SOURCE_DIR) -> Sources:
    """The train / val / V2 folders the conversion reads, checked to exist."""
    d = params.data
    if params.profile == "paper":
        missing = [k for k in ("imagenet", "imagenet_v2") if getattr(d, k) is None]
        if missing:
            raise SourceError(
                "profile 'paper' needs the real datasets: set "
                + " and ".join(f"data.{k}" for k in missing)
                + " in params.yaml (data.imagenet: the ImageNet-1K root holding train/ and val/; "
                "data.imagenet_v2: the ImageNet-V2 matched-frequency root holding 0/ ... 999/)")
    if uses_builtin(params):
        lay = builtin.layout(Path(source_dir) / "builtin")
        src = Sources(train=lay["train"], val=lay["val"], v2=lay["v2"])
    else:
        root = Path(d.imagenet)
        src = Sources(train=root / "train", val=root / "val",
                      v2=Path(d.imagenet_v2) if d.imagenet_v2 is not None else None)
    checks = [("data.imagenet", src.train), ("data.imagenet", src.val), ("data.imagenet_v2", src.v2)]
    for key, path in checks:
        if path is not None and not path.is_dir():
            where = f"{key} = {getattr(d, key.split('.')[1])!r}" if not uses_builtin(params) else \
                f"the built-in set (run `dvc repro prepare_data` first)"
            raise SourceError(f"{path}: folder not found ({where})")
    return src
