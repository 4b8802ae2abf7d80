"""Checkpoints of a transfer run: plain PyTorch state (model, optimiser, counters, curves) instead
of a DeepSpeed engine's, under the pretraining stages' rules (pipeline/train/checkpoint.py): a tag
counts once rank 0 has written `COMPLETE` into it after every rank's files, `latest` points at
the newest, another run configuration never resumes from them, half-written tags are deleted.
"""
from __future__ import annotations

import shutil

import torch

from pipeline.train.checkpoint import CheckpointStore, atomic_torch_save, rng_state, set_rng_state, tag_for
from pipeline.train.collectives import barrier


class TransferCheckpoints(CheckpointStore):
    """`prepare`, `latest_tag` and `clear` as the parent's; every rank calls every method."""

    def save_state(self, step: int, state: dict) -> str:
        """Rank 0's `state` and every rank's RNG, as tag step<step>."""
        tag = tag_for(step)
        folder = self.root / tag
        if self.rank == 0 and folder.exists():  # a leftover of a run killed at this very step
            shutil.rmtree(folder)
        barrier()
        if self.rank == 0:
            atomic_torch_save(state, folder / "state.pt")
        atomic_torch_save(rng_state(), folder / f"rng_rank{self.rank}.pt")
        barrier()
        return self.publish(tag, step)

    def load_state(self, tag: str) -> dict:
        """The saved state; this rank's RNG is restored."""
        rng = self.root / tag / f"rng_rank{self.rank}.pt"
        if not rng.is_file():
            raise RuntimeError(f"{rng} missing: checkpoint {tag} was written with another number of ranks")
        set_rng_state(torch.load(rng, weights_only=False))
        return torch.load(self.root / tag / "state.pt", map_location="cpu", weights_only=False)
