"""HIRI-ViT models. Importing this package registers hiri_vit_{s,b,l} with timm; the Table 7-9
ablation models register on `import pipeline.models.ablations` (docs/ablations.md), so that the
training stages of the main models do not run, nor depend on, the ablations' code."""
from .hiri_vit import CONFIGS, HiriViT, hiri_vit_b, hiri_vit_l, hiri_vit_s  # noqa: F401 (registers)

__all__ = ["CONFIGS", "HiriViT", "hiri_vit_s", "hiri_vit_b", "hiri_vit_l"]
