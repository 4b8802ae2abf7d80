"""Reading one image file as 8-bit RGB, and saying why a file cannot be read.

Both loaders see the same pixels: the FFCV writer stores what `load_rgb` returns, and the
torchvision fallback uses `load_rgb` as its ImageFolder loader.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL's modes that hold more than 8 bits per sample. `Image.convert("RGB")` clips them at 255
# instead of scaling, which would turn a 16-bit photograph white; they are rescaled here.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image (L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F, 1 ...) as 8-bit RGB.

    Alpha is dropped, as torchvision's default loader does, so both backends agree.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = _WIDE_MODES.get(img.mode) or (65535.0 if a.max(initial=0) > 255 else 255.0)
        a = np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode in ("P", "PA"):
        # Palettes may carry transparency; go through RGBA so PIL keeps the colours.
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode a file fully and return it as 8-bit RGB (raises on unreadable files)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """None when the file decodes as an image; otherwise a short reason for the manifest."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
    except OSError as err:
        return f"cannot stat: {err}"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation is
                # caught, at a fraction of the full decode's cost.
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            if img.width < 1 or img.height < 1:
                return f"empty image ({img.width}x{img.height})"
            to_rgb(img)
    except UnidentifiedImageError:
        return "not an image (no decoder recognises it)"
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncation as OSError("image file is truncated ...") and broken headers
        # as SyntaxError or ValueError.
        return f"decoding failed: {type(err).__name__}: {err}"
    except Image.DecompressionBombError as err:
        return f"refused: {err}"
    return None
