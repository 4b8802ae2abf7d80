"""HIRI-ViT models. Importing this package registers hiri_vit_{s,b,l} with timm."""
from .hiri_vit import CONFIGS, HiriViT, hiri_vit_b, hiri_vit_l, hiri_vit_s  # noqa: F401 (registers)
from . import ablations  # noqa: F401 (registers the Table 7-9 models: docs/ablations.md)

__all__ = ["CONFIGS", "HiriViT", "hiri_vit_s", "hiri_vit_b", "hiri_vit_l"]
