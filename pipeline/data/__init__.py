"""Data: the built-in dataset, the FFCV conversion, and the training / validation loaders.

Public entry points (see docs/data.md):
    build_train_loader, build_val_loader   -- pipeline.data.loaders
    convert, Sources                       -- pipeline.data.convert
    generate                               -- pipeline.data.builtin
    resolve_sources, FFCV_DIR, SOURCE_DIR  -- pipeline.data.sources
"""
from pipeline.data.loaders import Batches, build_train_loader, build_val_loader
from pipeline.data.sources import FFCV_DIR, SOURCE_DIR, resolve_sources

__all__ = ["Batches", "build_train_loader", "build_val_loader", "FFCV_DIR", "SOURCE_DIR", "resolve_sources"]
