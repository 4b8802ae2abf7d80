"""Data: the built-in dataset, the FFCV conversion, and the training / validation loaders.

Public entry points (see docs/data.md):
    build_train_loader, build_val_loader   -- pipeline.data.loaders
    convert, Sources                       -- pipeline.data.convert
    generate                               -- pipeline.data.builtin
    resolve_sources, FFCV_DIR, SOURCE_DIR  -- pipeline.data.sources

The names are imported on first use, not with the package: the data stages (prepare_data,
convert_imagenet) then never load the training loaders, and dvc.yaml lists as their code only the
files they run, so an edit to the loaders does not rerun a conversion.
"""
from importlib import import_module

_HOME = {"Batches": "loaders", "build_train_loader": "loaders", "build_val_loader": "loaders",
         "FFCV_DIR": "sources", "SOURCE_DIR": "sources", "resolve_sources": "sources"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
