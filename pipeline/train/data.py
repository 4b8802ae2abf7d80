"""The training loop's view of the data: epoch-addressable training batches and evaluation sets.

`ProjectData` wraps the loaders of pipeline.data (FFCV or torchvision over the conversion's
manifest). The loop starts *any* epoch, not only the next one, because a resumed run continues at
the epoch it was killed in: `epoch_batches` sets the epoch (`Batches.set_epoch`), so that a given
(seed, epoch) always yields the same order.

Augmentation is reproducible on both backends: every draw (crop, flip, RandAugment, Random
Erasing) is a function of (seed, epoch, sample index) (pipeline.data.seeding), whatever the worker
count or thread schedule, so a resumed run sees the batches of the uninterrupted one. The loaders
leave the global generators alone; the loop seeds those per (seed, epoch, rank) and restores them
mid-epoch, which makes Mixup/CutMix (numpy) and drop-path (torch) draws a function of (seed,
epoch, step) too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import torch

from pipeline.config import Params


class TrainData(Protocol):
    num_classes: int

    def train(self, micro_batch: int, seed: int, world_size: int, device: torch.device | None = None) -> object:
        """This rank's training batches; they may arrive on `device` already."""

    def evaluation(self, split: str, batch: int, rank: int = 0, world: int = 1) -> object | None:
        """Rank `rank`'s shard of `split` (every image in exactly one shard), None if no such split."""


def epoch_batches(batches, epoch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate the batches of `epoch` (0-based) of a pipeline.data `Batches` (or a plain iterable)."""
    if hasattr(batches, "set_epoch"):  # pipeline.data's Batches, the synthetic set of the tests
        batches.set_epoch(epoch, seed)
    return iter(batches)


class ProjectData:
    """Train / val / V2 batches of the converted dataset (data/ffcv/manifest.json)."""

    def __init__(self, params: Params, img_size: int, ffcv_dir: str | Path, backend: str | None = None,
                 num_workers: int | None = None):
        from pipeline.data.manifest import load_manifest

        self.params = params
        self.img_size = img_size
        self.ffcv_dir = Path(ffcv_dir)
        self.backend = backend
        self.num_workers = num_workers
        manifest = load_manifest(self.ffcv_dir)
        self.num_classes = len(manifest["classes"])
        self.splits = set(manifest["splits"])

    def train(self, micro_batch: int, seed: int, world_size: int, device: torch.device | None = None):
        from pipeline.data.loaders import build_train_loader

        return build_train_loader(self.params, self.img_size, micro_batch, ffcv_dir=self.ffcv_dir,
                                  backend=self.backend, num_workers=self.num_workers, seed=seed,
                                  distributed=world_size > 1, drop_last=True, device=device)

    def evaluation(self, split: str, batch: int, rank: int = 0, world: int = 1):
        from pipeline.data.loaders import build_val_loader

        if split not in self.splits:
            return None
        return build_val_loader(self.params, self.img_size, batch, split=split, ffcv_dir=self.ffcv_dir,
                                backend=self.backend, num_workers=self.num_workers, shard=(rank, world))
