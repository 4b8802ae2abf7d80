"""The fine-tuning loop of a transfer stage, plain PyTorch (DDP when several ranks).

Batches: iteration i of epoch e takes the global batch perm_e[i*B:(i+1)*B] of a permutation drawn
from (seed, e); rank r, accumulation step a takes its micro-batch from that. The order is
therefore a function of the seed and the iteration only, so a run resumed from a checkpoint at
iteration i sees exactly the batches an uninterrupted run would (and every augmentation draw is
a function of (seed, epoch, index) inside the datasets).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.train.progress import fmt_eta, log


@dataclass
class LoopState:
    it: int = 0
    history: list[dict] = field(default_factory=list)  # one row per evaluation (the DVC plot)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def micro_batches(n: int, seed: int, epoch: int, start_it: int, ipe: int, global_batch: int, micro: int,
                  rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches (index lists) from iteration `start_it` to the epoch's end, in order;
    each iteration contributes global_batch / (micro * world) of them."""
    order = epoch_order(n, seed, epoch).tolist()
    order = order * math.ceil(ipe * global_batch / n) if ipe * global_batch > n else order  # wrap a short set
    steps = global_batch // (micro * world)
    out = []
    for it in range(start_it, ipe):
        batch = order[it * global_batch:(it + 1) * global_batch]
        for a in range(steps):
            lo = (a * world + rank) * micro
            out.append(batch[lo:lo + micro])
    return out


class Fitter:
    """Runs `task` on `model` from `state` to the end; checkpoints, evaluates, logs."""

    def __init__(self, *, name, task, model, ddp, optimizer, train, val, device, precision, store, rank, world,
                 workers, on_eval=None, stop=None):
        self.name, self.task, self.model, self.ddp, self.optimizer = name, task, model, ddp, optimizer
        self.train, self.val, self.device, self.precision = train, val, device, precision
        self.store, self.rank, self.world, self.workers = store, rank, world, workers
        self.on_eval, self.stop = on_eval, stop
        r = task.recipe
        self.global_batch, self.micro = r.batch_size, r.micro_batch_size
        if self.global_batch % (self.micro * world):
            raise ValueError(f"batch_size {self.global_batch} does not split into micro-batches of "
                             f"{self.micro} on {world} ranks")
        self.accum = self.global_batch // (self.micro * world)
        self.ipe = task.iters_per_epoch(len(train))
        self.total = task.total_iters(self.ipe)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.state = LoopState()

    def _save(self) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "it": self.state.it,
                 "history": self.state.history}
        self.store.save_state(self.state.it, state)

    def resume(self, tag: str) -> None:
        saved = self.store.load_state(tag)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = LoopState(it=saved["it"], history=saved["history"])
        if self.rank == 0:
            log(f"[{self.name}] resumed from checkpoint {tag} (iteration {self.state.it}/{self.total})")

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def fit(self) -> list[dict]:
        r = self.task.recipe
        seed = self.task.spec.run.seed
        start_time, start_it, window = time.perf_counter(), self.state.it, []
        while self.state.it < self.total:
            epoch, first = divmod(self.state.it, self.ipe)
            if hasattr(self.train, "set_epoch"):
                self.train.set_epoch(epoch)
            batches = micro_batches(len(self.train), seed, epoch, first, self.ipe, self.global_batch, self.micro,
                                    self.rank, self.world)
            loader = DataLoader(self.train, batch_sampler=batches, collate_fn=self.task.collate,
                                num_workers=self.workers, persistent_workers=False)
            pending = []
            for batch in loader:
                pending.append(batch)
                if len(pending) < self.accum:
                    continue
                loss, parts = self._step(pending)
                pending = []
                self.state.it += 1
                window.append((loss, parts))
                it = self.state.it
                if self.rank == 0 and (it % r.log_every_iters == 0 or it == self.total):
                    done = it - start_it
                    eta = (time.perf_counter() - start_time) / done * (self.total - it)
                    mean = {k: sum(p[k] for _, p in window) / len(window) for k in window[-1][1]}
                    log(f"[{self.name}] epoch {epoch + 1} iter {it}/{self.total} loss "
                        f"{sum(lo for lo, _ in window) / len(window):.4f} ("
                        + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
                        + f") lr {self.optimizer.param_groups[0]['lr']:.2e} ETA {fmt_eta(eta)}")
                if self.task.eval_due(it, self.ipe, self.total):
                    self._evaluate(epoch, window)
                    window = []
                if it % r.checkpoint_every_iters == 0 or it % self.ipe == 0 or it == self.total:
                    self._save()
                if self.stop is not None and self.stop.agreed():
                    from pipeline.train.preempt import Preempted

                    self._save()
                    raise Preempted(self.stop.agreed(), it)
                if it >= self.total:
                    break
        return self.state.history

    def _step(self, micro_batches: list) -> tuple[float, dict[str, float]]:
        factor = self.task.lr_factor(self.state.it, self.ipe)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        total, parts = 0.0, {}
        for a, batch in enumerate(micro_batches):
            sync = self.ddp.no_sync() if (self.world > 1 and a < len(micro_batches) - 1) else nullcontext()
            with sync, self._autocast():
                loss, these = self.task.loss(self.ddp, batch, self.device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{self.name}] loss is {float(loss)} at iteration {self.state.it} "
                                         f"({these}): lower lr or check the data")
            (loss / len(micro_batches)).backward()
            total += float(loss.detach()) / len(micro_batches)
            for k, v in these.items():
                parts[k] = parts.get(k, 0.0) + v / len(micro_batches)
        clip = self.task.recipe.clip_grad
        if clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, parts

    def _evaluate(self, epoch: int, window: list) -> None:
        t0 = time.perf_counter()
        scores = self.task.evaluate(self.model, self.val, self.device, self.rank, self.world)
        if self.rank != 0:
            return
        row = {"iter": self.state.it, "epoch": epoch + 1,
               "loss": sum(lo for lo, _ in window) / max(1, len(window)),
               "lr": self.optimizer.param_groups[0]["lr"], **scores}
        self.state.history.append(row)
        log(f"[{self.name}] eval at iter {self.state.it}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
        if self.on_eval is not None:
            self.on_eval(row)
