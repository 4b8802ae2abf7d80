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


def _prefer_openmp_threads() -> None:
    """FFCV runs its compiled pipeline in numba's parallel loops, and which threads run them
    matters: on the paper recipe at 448 (bench/loader.py, 2 workers, 2 cores) the FFCV loader
    delivered about 500 img/s on numba's default TBB layer and about 720 img/s on its OpenMP
    layer (docs/data.md). So OpenMP is tried first; where no OpenMP runtime
    loads, numba takes TBB, then its own workqueue, as before. NUMBA_THREADING_LAYER or
    NUMBA_THREADING_LAYER_PRIORITY in the environment still decide. (GNU OpenMP is not fork-safe
    once used: a forked child must not run a parallel numba loop. Ours do not: only the loaders'
    pipelines are parallel, and the process pools of conversion and generation run none.)"""
    import os

    try:
        from numba.core import config
    except ImportError:
        return
    if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


_cache_numba_typed_dict()
_prefer_openmp_threads()

_HOME = {"Batches": "loaders", "build_train_loader": "loaders", "build_val_loader": "loaders",
         "FFCV_DIR": "sources", "SOURCE_DIR": "sources", "resolve_sources": "sources"}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
