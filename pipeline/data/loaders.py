"""Training and validation loaders: FFCV over the betons, or torchvision over the same files.

Both backends read the conversion's manifest: FFCV for the beton paths, torchvision for the
source folders and the files the conversion skipped, so both see exactly the same images with
the same labels. Each yields (images, labels): float32 NCHW normalised, int64 (N,).

FFCV note: the FFCV loader reuses its output buffers, so clone a batch to keep it past the next
one. It also sets torch's intra-op thread count to its worker count (ffcv.pipeline.compiler);
`Batches` puts back the count the process had when the loader was built.
"""
from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (see _stop_open_loaders: its exit hook must be registered first)
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch

from pipeline.config import DataParams, LoaderParams, Params
from pipeline.data import transforms as T
from pipeline.data.images import load_rgb
from pipeline.data.seeding import TORCHVISION, EpochCell, python_key
from pipeline.data.manifest import ManifestError, beton_path, load_manifest, split_entry
from pipeline.data.sources import FFCV_DIR

Backend = Literal["ffcv", "torchvision"]


class _Running:
    """The epoch iterator a `Batches` has open, and how to stop it. Kept apart from `Batches` so that
    a finalizer can hold it without keeping the `Batches` alive."""

    def __init__(self):
        self.iterator = None

    def stop(self) -> None:
        it, self.iterator = self.iterator, None
        if it is None:
            return
        if hasattr(it, "terminate_event"):  # FFCV's EpochIterator: a thread filling a queue
            it.close()
            it.join(timeout=30)
        elif hasattr(it, "_shutdown_workers"):  # torch's multi-process iterator
            it._shutdown_workers()


_OPEN: weakref.WeakSet[_Running] = weakref.WeakSet()


@atexit.register
def _stop_open_loaders() -> None:
    """At interpreter exit, stop every loader still running, before multiprocessing's own exit hook
    joins the torchvision backend's worker processes (which wait for work forever, so the script
    would hang). atexit runs its hooks last-registered first, and this one is registered after
    multiprocessing.util's (imported above). `weakref.finalize` cannot be relied on for it: its
    exit hook is registered with the process's first finalizer, which a library imported earlier
    (numba, since pipeline.data imports it) may create before multiprocessing is imported."""
    for running in list(_OPEN):
        running.stop()


@dataclass
class Batches:
    """An iterable of (images, labels) batches; each `iter()` is one epoch.

    One epoch runs at a time: a new `iter()` stops the previous one. `close()` (or leaving a `with`
    block) stops the running epoch's threads or worker processes at once; a `Batches` that is
    dropped or still open at interpreter exit is closed by a finalizer, so a script that takes a
    few batches and ends exits promptly.
    """

    loader: object
    backend: str
    split: str
    num_images: int
    num_classes: int
    batch_size: int
    sampler: object = None  # torchvision + distributed: reshuffled per epoch
    cell: EpochCell | None = None  # (seed, epoch) the seeded augmentations read
    # FFCV training: the steps after the loader, on the training device (ffcv_ops.DeviceTail); the
    # loader's labels are then [label, sample index] rows
    tail: Callable | None = None
    torch_threads: int | None = None  # FFCV: torch's intra-op thread count to keep (see _keep_threads)
    _epoch: int = 0

    def __post_init__(self):
        self._running = _Running()
        _OPEN.add(self._running)
        self._finalizer = weakref.finalize(self, self._running.stop)  # a Batches dropped mid-epoch

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Make the next `iter()` epoch `epoch` (0-based) of a run seeded `seed`, whatever came
        before: a resumed run starts mid-way. The order comes from (seed, epoch) (FFCV's loader,
        or the torchvision generator reseeded here); every augmentation draw from (seed, epoch,
        sample index)."""
        if self.backend == "torchvision":
            gen = getattr(self.loader, "generator", None)
            if gen is not None:
                gen.manual_seed(seed * 100_003 + epoch)
        if self.cell is not None:
            self.cell.set(seed, self.cell.epoch)
        self._epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._running.stop()  # the augmentations read the epoch: never two epochs at once
        epoch = self._epoch
        self._epoch += 1
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.cell is not None:
            self.cell.set(self.cell.seed, epoch)
        if self.backend == "ffcv":
            self.loader.next_epoch = epoch
        if isinstance(self.loader.dataset if hasattr(self.loader, "dataset") else None, FileList):
            self.loader.dataset.set_epoch(self.cell.seed if self.cell else 0, epoch)
        it = self._running.iterator = iter(self.loader)
        self._keep_threads()
        return self._batches(it)

    def _keep_threads(self) -> None:
        # FFCV sets torch's intra-op thread count to its worker count (on import to 1, then in
        # Loader.__init__, __iter__ and its epoch thread): put back the count the process had, so
        # the training step's arithmetic does not depend on the loader's worker count.
        if self.torch_threads and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    def _batches(self, it) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for images, labels in it:
                self._keep_threads()  # the epoch thread has set it before its first batch
                if self.tail is not None:
                    labels, indices = labels[:, 0], labels[:, 1]
                    images = self.tail(images, indices.tolist())
                yield images, labels.long()
        finally:  # the epoch ended, or its consumer let go of it (break, del, an exception)
            if self._running.iterator is it:
                self._running.stop()

    def close(self) -> None:
        """Stop the running epoch's threads / worker processes now."""
        self._running.stop()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.loader)


def _data_params(params: Params | DataParams) -> DataParams:
    return params.data if isinstance(params, Params) else params


# --- torchvision backend ------------------------------------------------------------------------

class FileList(torch.utils.data.Dataset):
    """(path, label) pairs through `load_rgb` and a transform: ImageFolder without its listing.

    With `seeded`, sample i of epoch e is transformed under Python's, NumPy's and torch's global
    generators seeded from (seed, e, i), and the generators are put back afterwards: timm's
    transforms draw from those globals, and this makes their draws independent of the worker
    count and of what the process drew before (the training step's Mixup, with no workers).
    """

    def __init__(self, files: list[tuple[str, int]], transform, seeded: bool = False):
        self.samples = files
        self.transform = transform
        self.seeded = seeded
        self.seed, self.epoch = 0, 0

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = load_rgb(path)
        if not self.seeded:
            return self.transform(image), label
        with seeded_globals(python_key(self.seed, self.epoch, i, TORCHVISION)):
            return self.transform(image), label


@contextmanager
def seeded_globals(key: int):
    """Seed random, numpy.random and torch from `key`; restore their states on the way out."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(key)
    np.random.seed(key % 2**32)
    torch.manual_seed(key % 2**63)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def manifest_files(manifest: dict, split: str, ffcv_dir: str | Path) -> list[tuple[str, int]]:
    """The files the betons of `split` hold, listed again from the source, in the same order."""
    from pipeline.data.scan import list_imagenet_split, list_v2_split

    entry = split_entry(manifest, split, ffcv_dir)
    lister = list_v2_split if entry["layout"] == "imagenet-v2" else list_imagenet_split
    scan = lister(split, entry["source"], manifest["classes"])
    skipped = {s["path"] for s in entry["skipped"]}
    scan.files = [(p, y) for p, y in scan.files if p not in skipped]
    if scan.counts() != entry["per_class"]:
        changed = [c for c, n in scan.counts().items() if entry["per_class"].get(c) != n]
        raise ManifestError(f"{entry['source']}: files changed since the conversion (classes {changed[:10]}); "
                            "rerun the conversion")
    return scan.files


def _ignore_stop_signals(_worker_id: int) -> None:
    """worker_init_fn: a worker killed by SLURM's SIGTERM/SIGUSR2 would fail the training process
    before it saves its checkpoint; the workers end with the training process instead."""
    import signal

    for s in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)


def _torchvision(files, transform, batch_size, num_workers, shuffle, drop_last, distributed, seed, seeded=False):
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(files, shuffle=shuffle, seed=seed, drop_last=drop_last)
    gen = torch.Generator().manual_seed(seed)
    # The order comes from the generator, which set_epoch reseeds per (seed, epoch); a seeded
    # FileList draws each sample's augmentation from (seed, epoch, index), whichever worker (or the
    # main process) loads it. Workers are started afresh each epoch (not persistent), so each gets
    # the epoch that FileList.set_epoch wrote before the iterator was made. SLURM's stop signals reach every
    # process of a job; the workers ignore them and the training process saves (train.preempt).
    loader = torch.utils.data.DataLoader(
        FileList(files, transform, seeded), batch_size=batch_size, shuffle=shuffle and sampler is None,
        sampler=sampler, num_workers=num_workers, drop_last=drop_last, generator=gen,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    return loader, sampler


# --- FFCV backend -------------------------------------------------------------------------------

def _ffcv(path, image_pipeline, batch_size, cfg: LoaderParams, num_workers, train, drop_last, distributed, seed,
          indices=None):
    from ffcv.loader import Loader, OrderOption
    from ffcv.memory_managers import OSCacheManager

    from pipeline.data.ffcv_ops import os_cache_reader

    OSCacheManager.compile_reader = os_cache_reader  # FFCV's own alters numba's types (see there)
    return Loader(str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=cfg.os_cache,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL, distributed=distributed,
                  seed=seed, drop_last=drop_last, indices=indices,
                  pipelines={"image": image_pipeline, "label": T.ffcv_label_pipeline(with_index=train)})


# --- public -------------------------------------------------------------------------------------

def build_train_loader(params: Params | DataParams, resolution: int, batch_size: int, *,
                       ffcv_dir: str | Path = FFCV_DIR, backend: Backend | None = None,
                       num_workers: int | None = None, seed: int = 0, distributed: bool = False,
                       drop_last: bool = True, device: torch.device | str | None = None) -> Batches:
    """Shuffled training batches with the paper's augmentation at `resolution`.

    backend / num_workers default to data.loader.backend / data.loader.workers(). FFCV: the images
    travel as uint8 and are normalised and erased on `device` (default the CPU), where they arrive
    channels_last; torchvision: every step in the worker processes, on the CPU.
    """
    d = _data_params(params)
    cfg = d.loader
    backend = backend or cfg.backend
    workers = cfg.workers() if num_workers is None else num_workers
    manifest = load_manifest(ffcv_dir)
    entry = split_entry(manifest, "train", ffcv_dir)
    cell = EpochCell(seed, 0)
    tail = None
    threads = torch.get_num_threads()  # before FFCV changes it (Batches._keep_threads)
    if backend == "ffcv":
        path = beton_path(manifest, "train", resolution, cfg.val_crop_pct, ffcv_dir)
        pipeline = T.ffcv_train_image_pipeline(cfg, resolution, cell, device=device)
        loader, sampler = _ffcv(path, pipeline, batch_size, cfg, workers, True, drop_last, distributed, seed), None
        tail = T.ffcv_train_tail(cfg, cell, device)
    elif backend == "torchvision":
        files = manifest_files(manifest, "train", ffcv_dir)
        loader, sampler = _torchvision(files, T.train_transform(cfg, resolution), batch_size, workers,
                                       True, drop_last, distributed, seed, seeded=True)
    else:
        raise ValueError(f"backend {backend!r}: expected 'ffcv' or 'torchvision' (data.loader.backend)")
    batches = Batches(loader, backend, "train", entry["images"], len(manifest["classes"]), batch_size, sampler,
                      cell=cell, torch_threads=threads if backend == "ffcv" else None, tail=tail)
    batches._keep_threads()
    return batches


def build_val_loader(params: Params | DataParams, resolution: int, batch_size: int, *,
                     split: Literal["val", "v2"] = "val", ffcv_dir: str | Path = FFCV_DIR,
                     backend: Backend | None = None, num_workers: int | None = None,
                     distributed: bool = False, shard: tuple[int, int] = (0, 1)) -> Batches:
    """Evaluation batches of `split` (val or v2) in file order: resize, centre crop, normalise.

    Every image is yielded once (no drop_last); with distributed=True FFCV and the sampler pad
    the last batch by repeating images, so exact counts need the non-distributed loader.
    shard=(rank, world): only images rank, rank + world, ... (each image in exactly one shard).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard {shard}: expected (rank, world) with 0 <= rank < world")
    d = _data_params(params)
    cfg = d.loader
    backend = backend or cfg.backend
    workers = cfg.workers() if num_workers is None else num_workers
    manifest = load_manifest(ffcv_dir)
    entry = split_entry(manifest, split, ffcv_dir)
    threads = torch.get_num_threads()  # before FFCV changes it (Batches._keep_threads)
    if backend == "ffcv":
        path = beton_path(manifest, split, resolution, cfg.val_crop_pct, ffcv_dir)
        indices = None if world == 1 else list(range(rank, entry["images"], world))
        loader, sampler = _ffcv(path, T.ffcv_val_image_pipeline(cfg, resolution), batch_size, cfg,
                                workers, False, False, distributed, 0, indices), None
    elif backend == "torchvision":
        files = manifest_files(manifest, split, ffcv_dir)[rank::world]
        loader, sampler = _torchvision(files, T.val_transform(cfg, resolution), batch_size, workers,
                                       False, False, distributed, 0)
    else:
        raise ValueError(f"backend {backend!r}: expected 'ffcv' or 'torchvision' (data.loader.backend)")
    batches = Batches(loader, backend, split, len(range(rank, entry["images"], world)), len(manifest["classes"]),
                      batch_size, sampler, torch_threads=threads if backend == "ffcv" else None)
    batches._keep_threads()
    return batches
