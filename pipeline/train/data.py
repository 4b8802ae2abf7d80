"""The training loop's view of the data: epoch-addressable training batches and evaluation sets.

`ProjectData` wraps the loaders of pipeline.data (FFCV or torchvision over the conversion's
manifest). The loop starts *any* epoch, not only the next one, because a resumed run continues at
the epoch it was killed in: `epoch_batches` sets the epoch (`Batches.set_epoch`), so that a given
(seed, epoch) always yields the same order.

Augmentation draws are reproducible on the torchvision backend: without worker processes the
transforms draw from the main process RNGs, which checkpoints restore; with workers, each epoch
starts fresh workers seeded from the reseeded generator, and a resumed epoch still draws the
batches it skips, so every worker's RNG is where it was. FFCV's numba-compiled crops and worker
threads draw from unseeded per-thread generators, so there a resumed run restores weights,
optimiser, schedule and data order exactly, but not the crops (nor do two uninterrupted runs
agree on them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import torch

from pipeline.config import Params


class TrainData(Protocol):
    num_classes: int

    def train(self, micro_batch: int, seed: int, world_size: int) -> object: ...

    def evaluation(self, split: str, batch: int) -> object | None: ...


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

    def train(self, micro_batch: int, seed: int, world_size: int):
        from pipeline.data.loaders import build_train_loader

        return build_train_loader(self.params, self.img_size, micro_batch, ffcv_dir=self.ffcv_dir,
                                  backend=self.backend, num_workers=self.num_workers, seed=seed,
                                  distributed=world_size > 1, drop_last=True)

    def evaluation(self, split: str, batch: int):
        from pipeline.data.loaders import build_val_loader

        if split not in self.splits:
            return None
        return build_val_loader(self.params, self.img_size, batch, split=split, ffcv_dir=self.ffcv_dir,
                                backend=self.backend, num_workers=self.num_workers)
