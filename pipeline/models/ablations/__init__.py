"""The ablations of Sections 5.4-5.7 (Tables 7, 8, 9) as timm models. Importing this package
registers them; `ROWS` maps each paper row to its model and resolution, `create_row_model` builds
one as its DVC stage does."""
from . import other_backbones, variants  # noqa: F401  (registers the models)
from .net import StagedNet, StageSpec
from .rows import ROWS, RowModel, create_row_model

__all__ = ["ROWS", "RowModel", "StagedNet", "StageSpec", "create_row_model"]
