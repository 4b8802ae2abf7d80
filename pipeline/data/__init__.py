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


def _cache_numba_typed_dict() -> None:
    """Importing FFCV builds a numba typed Dict (ffcv.fields.rgb_image.IMAGE_MODES), and numba
    compiles its typed-dict functions anew in every process: ~3 s of each training, conversion
    and loader process, measured at 4.4-4.8 s against 1.7-1.9 s for `import ffcv.fields.rgb_image`
    with numba's on-disk cache turned on for them here, before any of our modules imports FFCV.
    Without numba (a bare GPU node running only the model) there is nothing to do."""
    try:
        from numba.core.registry import CPUDispatcher
        from numba.typed import typeddict
    except ImportError:
        return
    for value in vars(typeddict).values():
        if isinstance(value, CPUDispatcher):
            value.enable_caching()


_cache_numba_typed_dict()

_HOME = {"Batches": "loaders", "build_train_loader": "loaders", "build_val_loader": "loaders",
         "FFCV_DIR": "sources", "SOURCE_DIR": "sources", "resolve_sources": "sources"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
