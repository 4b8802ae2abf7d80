"""Training and validation loaders: FFCV over the betons, or torchvision over the same files.

Both backends read the conversion's manifest: FFCV for the beton paths, torchvision for the
source folders and the files the conversion skipped, so both see exactly the same images with
the same labels. Each yields (images, labels): float32 NCHW normalised, int64 (N,).

FFCV note: the FFCV loader reuses its output buffers, so clone a batch to keep it past the next
one; it also sets torch's intra-op thread count to its worker count (ffcv.pipeline.compiler).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import torch

from pipeline.config import DataParams, LoaderParams, Params
from pipeline.data import transforms as T
from pipeline.data.images import load_rgb
from pipeline.data.manifest import ManifestError, beton_path, load_manifest, split_entry
from pipeline.data.sources import FFCV_DIR

Backend = Literal["ffcv", "torchvision"]


@dataclass
class Batches:
    """An iterable of (images, labels) batches; each `iter()` is one epoch."""

    loader: object
    backend: str
    split: str
    num_images: int
    num_classes: int
    batch_size: int
    sampler: object = None  # torchvision + distributed: reshuffled per epoch
    errors: list = field(default_factory=list)  # failures inside FFCV's loader thread
    _epoch: int = 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Make the next `iter()` epoch `epoch` (0-based) of a run seeded `seed`, whatever came
        before: a resumed run starts mid-way. FFCV derives its order from (seed, next_epoch); the
        torchvision generator (order, and the workers' seeds) is reseeded from (seed, epoch)."""
        if self.backend == "ffcv":
            self.loader.next_epoch = epoch
        else:
            gen = getattr(self.loader, "generator", None)
            if gen is not None:
                gen.manual_seed(seed * 100_003 + epoch)
        self._epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self._epoch)
        self._epoch += 1
        for images, labels in self.loader:
            if self.errors:
                err = self.errors[0]
                raise RuntimeError(f"{self.backend} {self.split} pipeline failed in {len(self.errors)} place(s); "
                                   f"first: {type(err).__name__}: {err}") from err
            yield images, labels.long()

    def __len__(self) -> int:
        return len(self.loader)


def _data_params(params: Params | DataParams) -> DataParams:
    return params.data if isinstance(params, Params) else params


# --- torchvision backend ------------------------------------------------------------------------

class FileList(torch.utils.data.Dataset):
    """(path, label) pairs through `load_rgb` and a transform: ImageFolder without its listing."""

    def __init__(self, files: list[tuple[str, int]], transform):
        self.samples = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


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


def _torchvision(files, transform, batch_size, num_workers, shuffle, drop_last, distributed, seed):
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(files, shuffle=shuffle, seed=seed, drop_last=drop_last)
    gen = torch.Generator().manual_seed(seed)
    # Workers are started afresh each epoch (not persistent): their RNGs are then seeded from the
    # generator, which the training loop reseeds per (seed, epoch), so an epoch's augmentations
    # are the same in a resumed run as in an uninterrupted one. SLURM's stop signals reach every
    # process of a job; the workers ignore them and the training process saves (train.preempt).
    loader = torch.utils.data.DataLoader(
        FileList(files, transform), batch_size=batch_size, shuffle=shuffle and sampler is None,
        sampler=sampler, num_workers=num_workers, drop_last=drop_last, generator=gen,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)
    return loader, sampler


# --- FFCV backend -------------------------------------------------------------------------------

def _ffcv(path, image_pipeline, batch_size, cfg: LoaderParams, num_workers, train, drop_last, distributed, seed):
    from ffcv.loader import Loader, OrderOption

    return Loader(str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=cfg.os_cache,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL, distributed=distributed,
                  seed=seed, drop_last=drop_last,
                  pipelines={"image": image_pipeline, "label": T.ffcv_label_pipeline()})


# --- public -------------------------------------------------------------------------------------

def build_train_loader(params: Params | DataParams, resolution: int, batch_size: int, *,
                       ffcv_dir: str | Path = FFCV_DIR, backend: Backend | None = None,
                       num_workers: int | None = None, seed: int = 0, distributed: bool = False,
                       drop_last: bool = True) -> Batches:
    """Shuffled training batches with the paper's augmentation at `resolution`.

    backend / num_workers default to data.loader.backend / data.loader.num_workers.
    """
    d = _data_params(params)
    cfg = d.loader
    backend = backend or cfg.backend
    workers = cfg.num_workers if num_workers is None else num_workers
    manifest = load_manifest(ffcv_dir)
    entry = split_entry(manifest, "train", ffcv_dir)
    errors: list = []
    if backend == "ffcv":
        path = beton_path(manifest, "train", resolution, cfg.val_crop_pct, ffcv_dir)
        pipeline = T.ffcv_train_image_pipeline(cfg, resolution, threads=max(1, workers), errors=errors)
        loader, sampler = _ffcv(path, pipeline, batch_size, cfg, workers, True, drop_last, distributed, seed), None
    elif backend == "torchvision":
        files = manifest_files(manifest, "train", ffcv_dir)
        loader, sampler = _torchvision(files, T.train_transform(cfg, resolution), batch_size, workers,
                                       True, drop_last, distributed, seed)
    else:
        raise ValueError(f"backend {backend!r}: expected 'ffcv' or 'torchvision' (data.loader.backend)")
    return Batches(loader, backend, "train", entry["images"], len(manifest["classes"]), batch_size, sampler, errors)


def build_val_loader(params: Params | DataParams, resolution: int, batch_size: int, *,
                     split: Literal["val", "v2"] = "val", ffcv_dir: str | Path = FFCV_DIR,
                     backend: Backend | None = None, num_workers: int | None = None,
                     distributed: bool = False) -> Batches:
    """Evaluation batches of `split` (val or v2) in file order: resize, centre crop, normalise.

    Every image is yielded once (no drop_last); with distributed=True FFCV and the sampler pad
    the last batch by repeating images, so exact counts need the non-distributed loader.
    """
    d = _data_params(params)
    cfg = d.loader
    backend = backend or cfg.backend
    workers = cfg.num_workers if num_workers is None else num_workers
    manifest = load_manifest(ffcv_dir)
    entry = split_entry(manifest, split, ffcv_dir)
    if backend == "ffcv":
        path = beton_path(manifest, split, resolution, cfg.val_crop_pct, ffcv_dir)
        loader, sampler = _ffcv(path, T.ffcv_val_image_pipeline(cfg, resolution), batch_size, cfg,
                                workers, False, False, distributed, 0), None
    elif backend == "torchvision":
        files = manifest_files(manifest, split, ffcv_dir)
        loader, sampler = _torchvision(files, T.val_transform(cfg, resolution), batch_size, workers,
                                       False, False, distributed, 0)
    else:
        raise ValueError(f"backend {backend!r}: expected 'ffcv' or 'torchvision' (data.loader.backend)")
    return Batches(loader, backend, split, entry["images"], len(manifest["classes"]), batch_size, sampler)
