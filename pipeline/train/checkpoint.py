"""Checkpoints that are either complete or ignored, and resume from the newest complete one.

DeepSpeed writes the engine's state (weights, ZeRO optimiser partitions, one file per rank) with
its own `save_checkpoint`, into `<dir>/<tag>/`. A kill can interrupt that at any byte, so a tag
counts only once every rank has finished writing, the files are fsynced, and rank 0 has
atomically created `<tag>/COMPLETE` and then atomically pointed `<dir>/latest` at it (write to a
temporary name, fsync, `os.replace`). Resume reads `latest` (DeepSpeed's own pointer file name,
so `deepspeed.utils.zero_to_fp32` still works) and falls back to scanning for the newest tag with
its COMPLETE marker; unmarked tags are half-written leftovers and are deleted.

Beside DeepSpeed's files each tag holds `ema.pt` (the EMA teacher) and `rng_rank<r>.pt` (each
rank's torch / numpy / python RNG states, so a resumed run draws the same augmentations, mixing
boxes and drop-path masks as an uninterrupted one). `<dir>/fingerprint.json` names the run
configuration the checkpoints belong to; a different configuration never resumes from them.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .collectives import barrier

MARKER = "COMPLETE"
POINTER = "latest"
FINGERPRINT = "fingerprint.json"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def seed_all(seed: int) -> None:
    """torch, numpy and python: the same initial weights on every rank."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tag_for(step: int) -> str:
    return f"step{step:09d}"


class CheckpointStore:
    """The checkpoints of one run, in `root`. All ranks call every method (collective)."""

    def __init__(self, root: str | Path, fingerprint: dict, keep: int, rank: int = 0):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.keep = keep
        self.rank = rank

    # -- discovery ------------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / MARKER).is_file())

    def latest_tag(self) -> str | None:
        pointer = self.root / POINTER
        if pointer.is_file():
            tag = pointer.read_text().strip()
            if tag and (self.root / tag / MARKER).is_file():
                return tag
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def prepare(self, log=print) -> str | None:
        """Make `root` hold only this run's complete checkpoints; return the tag to resume from."""
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            fp_file = self.root / FINGERPRINT
            wanted = json.dumps(self.fingerprint, sort_keys=True, indent=1)
            if fp_file.is_file() and fp_file.read_text() != wanted:
                log(f"checkpoints in {self.root} belong to another configuration; starting afresh")
                for child in self.root.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            for child in self.root.iterdir():
                if child.is_dir() and not (child / MARKER).is_file():
                    log(f"removing incomplete checkpoint {child.name} (interrupted while being written)")
                    shutil.rmtree(child)
            atomic_write_text(fp_file, wanted)
        barrier()
        return self.latest_tag()

    # -- save / load ----------------------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict, ema_state: dict | None) -> str:
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0 and tag_dir.exists():  # a leftover of a run killed at this very step
            shutil.rmtree(tag_dir)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        atomic_torch_save(rng_state(), tag_dir / f"rng_rank{self.rank}.pt")
        if self.rank == 0 and ema_state is not None:
            atomic_torch_save(ema_state, tag_dir / "ema.pt")
        barrier()  # every rank's files are written
        if self.rank == 0:
            for f in tag_dir.rglob("*"):
                if f.is_file():
                    _fsync_path(f)
        return self.publish(tag, step)

    def publish(self, tag: str, step: int) -> str:
        """Once every rank's files of `tag` are written: mark it complete, point `latest` at it,
        drop the oldest beyond `keep`."""
        if self.rank == 0:
            atomic_write_text(self.root / tag / MARKER, f"{step}\n")
            atomic_write_text(self.root / POINTER, tag)
            self._prune(keep_tag=tag)
        barrier()
        return tag

    def _prune(self, keep_tag: str) -> None:
        tags = self.complete_tags()
        for old in tags[: max(0, len(tags) - self.keep)]:
            if old != keep_tag:
                # drop the marker first: a kill during rmtree leaves an unmarked (ignored) tag
                (self.root / old / MARKER).unlink(missing_ok=True)
                shutil.rmtree(self.root / old, ignore_errors=True)

    def load(self, engine, tag: str) -> tuple[dict, dict | None]:
        """Restore engine (weights, optimiser) and this rank's RNG; return (client_state, ema_state)."""
        load_path, client_state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                         load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root / tag}")
        ema_file = self.root / tag / "ema.pt"
        ema_state = torch.load(ema_file, map_location="cpu", weights_only=False) if ema_file.is_file() else None
        rng_file = self.root / tag / f"rng_rank{self.rank}.pt"
        if not rng_file.is_file():
            raise RuntimeError(f"{rng_file} missing: checkpoint {tag} was written with another number of ranks")
        client_state = dict(client_state or {})
        client_state["_rng"] = torch.load(rng_file, weights_only=False)
        return client_state, ema_state

    def clear(self) -> None:
        """Drop all checkpoints once the run's final weights are safely written."""
        barrier()
        if self.rank == 0 and self.root.exists():
            shutil.rmtree(self.root)
        barrier()
