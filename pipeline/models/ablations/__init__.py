"""The ablations of Sections 5.4-5.7 (Tables 7, 8, 9) as timm models. Importing this package
registers them; `ROWS` maps each paper row to its model and resolution."""
from . import other_backbones, variants  # noqa: F401  (registers the models)
from .net import StagedNet, StageSpec
from .rows import ROWS, RowModel

__all__ = ["ROWS", "RowModel", "StagedNet", "StageSpec"]
