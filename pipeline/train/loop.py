"""Our own plain training loop around the DeepSpeed engine.

Per micro-batch: the EMA teacher's probability maps of the unmixed batch, timm Mixup/CutMix, the
EMA-distillation target (pipeline.train.ema_distill), forward, soft-target cross-entropy,
`engine.backward`, `engine.step` (DeepSpeed accumulates, reduces, clips and steps at the
accumulation boundary). Nothing in a micro-batch waits for the device: the losses stay device
tensors. At the accumulation boundary, before DeepSpeed's step, the ranks agree in one all-reduce
whether any loss of the window was not finite: a NaN never reaches the weights, the EMA teacher or
a checkpoint. Per optimiser step: learning rate, EMA update, BatchNorm statistics averaged over
the ranks, progress line (a host sync at logging steps only), periodic checkpoint, and (in a
SLURM job) a checkpoint at a stop signal (pipeline.train.preempt; one all-reduce after the step).
Per epoch: validation Top-1 (every rank its shard), a curve row, a checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from timm.loss import SoftTargetCrossEntropy

from pipeline.config import RecipeParams

from .checkpoint import CheckpointStore, set_rng_state, tag_for
from .collectives import all_gather, all_reduce, all_sum, average_batchnorm_stats, world
from .data import epoch_batches
from .ema_distill import EmaTeacher, distill_target, teacher_target
from .engine import MEMORY_FORMAT, BatchLayout, to_memory_format, zero_stage
from .evaluate import Accuracy, accuracy, autocast
from .mixing import RecordingMixup
from .preempt import Preempted, StopRequests
from .progress import Progress, fmt_eta, log
from .schedule import build_scheduler, current_lr


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def _channels_last(model: torch.nn.Module) -> bool:
    return any(p.ndim == 4 and p.is_contiguous(memory_format=MEMORY_FORMAT) and not p.is_contiguous()
               for p in model.parameters())


def build_mixup(recipe: RecipeParams, num_classes: int) -> RecordingMixup:
    m = recipe.mix
    mixup = RecordingMixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob,
                           switch_prob=m.switch_prob, mode="batch", label_smoothing=m.label_smoothing,
                           num_classes=num_classes)
    # timm asserts when asked to mix with both alphas at 0; "no mixing" is a valid recipe here.
    mixup.mixup_enabled = m.prob > 0 and (m.mixup_alpha > 0 or m.cutmix_alpha > 0)
    return mixup


@dataclass
class LoopState:
    epoch: int = 0  # the epoch in progress (0-based)
    micro_in_epoch: int = 0  # micro-batches of that epoch already trained
    step: int = 0  # optimiser steps done
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    # this rank's share of the epoch in progress so far: loss sum, micro-batches, images, training
    # seconds; every rank's is kept in checkpoints so that a resumed epoch's curve row is the
    # uninterrupted run's
    partial: list[float] = field(default_factory=lambda: [0.0, 0, 0, 0.0])

    def client_state(self, partials: list[list[float]]) -> dict:
        """What DeepSpeed writes with the checkpoint, from rank 0's copy only: hence every rank's
        tally (`partials`, in rank order), not this rank's."""
        return {"epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch, "step": self.step,
                "history": self.history, "partial": partials}

    @classmethod
    def from_client_state(cls, s: dict, rank: int) -> "LoopState":
        partials = s.get("partial", [0.0, 0, 0, 0.0])
        if not isinstance(partials[0], list):  # a checkpoint of an earlier version: one tally, rank 0's
            partials = [partials] * (rank + 1)
        loss_sum, micro, images, seconds = partials[rank]
        return cls(s["epoch"], s["micro_in_epoch"], s["step"], list(s["history"]),
                   [float(loss_sum), int(micro), int(images), float(seconds)])


class Trainer:
    def __init__(self, *, name: str, engine, optimizer, teacher: EmaTeacher, recipe: RecipeParams,
                 layout: BatchLayout, train_batches, val_batches, num_classes: int, seed: int,
                 device: torch.device, precision: str, store: CheckpointStore, base_lr: float,
                 on_epoch=None, stop: StopRequests | None = None):
        self.name = name
        self.engine = engine
        self.optimizer = optimizer
        self.teacher = teacher
        self.recipe = recipe
        self.layout = layout
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.seed = seed
        self.device = device
        self.precision = precision
        self.store = store
        self.on_epoch = on_epoch  # callback(row) on rank 0 after each epoch (MLflow)
        self.stop = stop  # SLURM stop signals, acted on at optimiser-step boundaries
        self.rank, self.world = world()
        # the teacher, a copy of the student made before build_engine, takes the student's layout, so
        # that its forward and the EMA update run on the same one
        if _channels_last(engine.module):
            teacher.module.to(memory_format=MEMORY_FORMAT)
        self.mixup = build_mixup(recipe, num_classes)
        self.criterion = SoftTargetCrossEntropy()
        self.distill = recipe.ema.alpha < 1.0
        micro_per_epoch = len(train_batches)
        self.steps_per_epoch = micro_per_epoch // layout.accumulation
        if recipe.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, recipe.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{micro_per_epoch} micro-batches of {layout.micro_batch} per rank per epoch is less "
                             f"than one optimiser step ({layout.accumulation} accumulation steps): the training "
                             f"set is too small for batch_size {layout.global_batch}")
        self.micro_per_epoch = self.steps_per_epoch * layout.accumulation  # only whole optimiser steps
        self.total_steps = recipe.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(optimizer, recipe, self.steps_per_epoch, base_lr)
        self.state = LoopState()
        self.last_tag: str | None = None
        # rank 0: the student's val accuracy after the last epoch (the final weights), which the
        # final evaluation reuses instead of a second pass over the same images
        self.final_val: Accuracy | None = None
        self._rng_to_restore: dict | None = None  # set by resume(): RNG states of a mid-epoch checkpoint
        self._window: list[torch.Tensor] = []  # the losses of the accumulation window so far (device)
        # the epoch's loss sum so far, on the device (float64); state.partial[0] gets it at saves
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    # -- checkpoints ----------------------------------------------------------------------------
    def resume(self) -> bool:
        tag = self.store.prepare(log=log if self.rank == 0 else (lambda *_: None))
        if tag is None:
            return False
        client, ema_state = self.store.load(self.engine, tag)
        self.state = LoopState.from_client_state(client, self.rank)
        self._rng_to_restore = client["_rng"]
        if ema_state is not None:
            self.teacher.load_state_dict(ema_state)
        self.scheduler.step_update(self.state.step)
        self.last_tag = tag
        if self.rank == 0:
            log(f"[{self.name}] resuming from checkpoint {tag}: epoch {self.state.epoch + 1}, "
                f"step {self.state.step}/{self.total_steps}")
        return True

    def save(self) -> None:
        if self.state.micro_in_epoch:  # mid-epoch: the loss sum so far (a host sync; at saves only)
            self.state.partial[0] = float(self._loss_sum)
        partials = [t.tolist() for t in all_gather(torch.tensor(self.state.partial, dtype=torch.float64))]
        self.last_tag = self.store.save(self.engine, self.state.step, self.state.client_state(partials),
                                        self.teacher.state_dict())

    # -- training -------------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> None:
        # Each epoch starts from RNG states fixed by (seed, rank, epoch), independent of history,
        # so a resumed run can rebuild the epoch's data iterator exactly.
        import random

        import numpy as np

        s = (self.seed * 1_000_003 + epoch * 1_009 + self.rank) % 2**31
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def _check_window(self, micro: int) -> None:
        """At the accumulation boundary, before DeepSpeed's step: one all-reduce (one host sync) of
        whether any rank's window held a non-finite loss; NonFiniteLossError on every rank if so."""
        losses = torch.stack(self._window)
        self._window = []
        if all_reduce((~torch.isfinite(losses)).any().to(torch.int64).reshape(1), op="max").item():
            self._raise_nonfinite(losses.tolist(), micro)

    def _raise_nonfinite(self, losses: list[float], micro: int) -> None:
        first = next((i for i, v in enumerate(losses) if v != v or v in (float("inf"), float("-inf"))), None)
        where = f"optimiser step {self.state.step + 1} (epoch {self.state.epoch + 1}"
        if first is None:  # another rank's loss
            value, where = "not finite on another rank", where + ")"
        else:
            value = f"{losses[first]} (not finite)"
            where += f", micro-batch {micro - len(losses) + 2 + first}/{self.micro_per_epoch})"
        kept = f"last good checkpoint: {self.store.root / self.last_tag}" if self.last_tag else \
            "no checkpoint was written yet"
        raise NonFiniteLossError(f"[{self.name}] loss is {value} at {where}; stopping before the optimiser "
                                 f"step, the EMA update and any checkpoint. {kept}")

    def train_step(self, x: torch.Tensor, y: torch.Tensor, micro: int) -> None:
        """One micro-batch: forward, backward, and at the accumulation boundary the finiteness check
        and DeepSpeed's step."""
        x = to_memory_format(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        if self.distill:
            with autocast(self.device, self.precision):
                probs = self.teacher.prob_map(x)  # unmixed x_a (and x_b = its reverse)
        x, y_tilde, info = self.mixup(x, y)
        target = y_tilde
        if self.distill:
            target = distill_target(y_tilde, teacher_target(probs, info, tuple(x.shape[-2:])),
                                    self.teacher.alpha_at(self.state.step))
        with autocast(self.device, self.precision):
            logits = self.engine(x)
        loss = self.criterion(logits.float(), target)
        self.engine.backward(loss)
        loss = self._last_loss = loss.detach()  # read (a host sync) only at logging steps
        self._window.append(loss)
        self._loss_sum += loss.double()
        if (micro + 1) % self.layout.accumulation == 0:
            self._check_window(micro)
        self.engine.step()  # DeepSpeed counts micro-batches; it steps the optimiser at the boundary

    def fit(self) -> list[dict]:
        resumed = self.resume()
        rng = self._rng_to_restore
        progress = Progress(self.name, self.total_steps, self.layout.global_batch, self.state.step)
        t_first_step = 0.0  # when this session's first optimiser step ended (for _log_expected)
        log_every = self.recipe.log_every_steps
        ckpt_every = self.recipe.checkpoint_every_steps
        if self.rank == 0 and not resumed:
            log(f"[{self.name}] {self.recipe.epochs} epochs x {self.steps_per_epoch} steps, global batch "
                f"{self.layout.global_batch} = {self.layout.micro_batch} x {self.layout.accumulation} accumulation "
                f"x {self.world} ranks, precision {self.precision}, ZeRO stage {zero_stage(self.recipe, self.world)}")
        self.engine.train()
        while self.state.epoch < self.recipe.epochs:
            epoch = self.state.epoch
            skip = self.state.micro_in_epoch
            self._seed_epoch(epoch)
            if skip == 0:  # an epoch boundary: the epoch seeding above is what an uninterrupted run used
                rng = None
            it = epoch_batches(self.train_batches, epoch, self.seed)
            tally = self.state.partial  # loss sum, micro-batches, images, seconds: zeros unless resumed mid-epoch
            self._loss_sum.fill_(tally[0])  # summed on from there in the same order as an uninterrupted run
            for micro, (x, y) in enumerate(it):
                if micro >= self.micro_per_epoch:
                    break
                if micro < skip:  # trained before the interruption; drawn only to keep the order
                    continue
                if rng is not None:  # mid-epoch resume: the RNG states the checkpoint was taken with
                    set_rng_state(rng)
                    rng = None
                t0 = time.perf_counter()
                self.train_step(x, y, micro)
                tally[1:] = [tally[1] + 1, tally[2] + len(y), tally[3] + time.perf_counter() - t0]
                progress.count(len(y) * self.world)
                self.state.micro_in_epoch = micro + 1
                if (micro + 1) % self.layout.accumulation:
                    continue
                self.state.step += 1
                # DeepSpeed syncs gradients, not buffers: average the BatchNorm running stats so that
                # every rank's EMA teacher (eval-mode BN) and rank 0's checkpoint agree (SyncBatchNorm
                # keeps them equal already).
                if not self.recipe.sync_bn:
                    average_batchnorm_stats(self.engine.module)
                self.scheduler.step_update(self.state.step)
                self.teacher.update(self.engine.module, self.state.step)
                if self.rank == 0 and self.state.step == progress.start_steps + 1:
                    t_first_step = time.perf_counter()
                if self.rank == 0 and self.state.step == progress.start_steps + 2:
                    self._log_expected(time.perf_counter() - t_first_step)
                if self.rank == 0 and (self.state.step % log_every == 0):
                    log(progress.line(epoch, self.recipe.epochs, self.state.step, float(self._last_loss),
                                      current_lr(self.optimizer)))
                mid_epoch = self.state.micro_in_epoch < self.micro_per_epoch  # else the epoch end saves
                if self.state.step % ckpt_every == 0 and mid_epoch:
                    self.save()
                if mid_epoch:
                    self._stop_if_signalled()
            tally[0] = float(self._loss_sum)
            row = self._end_epoch(epoch, *tally, progress)
            self.state.history.append(row)
            self.state.epoch, self.state.micro_in_epoch, self.state.partial = epoch + 1, 0, [0.0, 0, 0, 0.0]
            self._loss_sum.zero_()
            self.save()
            if self.rank == 0 and self.on_epoch is not None:
                self.on_epoch(row)
            if self.state.epoch < self.recipe.epochs:
                self._stop_if_signalled()
        return self.state.history

    def _log_expected(self, step_seconds: float) -> None:
        """After this session's second optimiser step: the time the remaining steps should take at
        its pace (the first step carries the loader's and oneDNN's warm-up, several times a step)."""
        left = self.total_steps - self.state.step
        log(f"[{self.name}] {step_seconds:.1f} s per step: expect about {fmt_eta(step_seconds * left)} for the "
            f"remaining {left} steps, plus validation after each of {self.recipe.epochs - self.state.epoch} "
            f"epoch(s) and the final evaluation")

    def _stop_if_signalled(self) -> None:
        """After an optimiser step (the latest moment a signal can be acted on before the next one):
        if any rank was signalled, save (unless this step's checkpoint exists already) and raise
        Preempted on every rank. One all-reduce, in SLURM jobs only."""
        if self.stop is None:
            return
        signum = self.stop.agreed()
        if not signum:
            return
        if self.last_tag != tag_for(self.state.step):
            self.save()
        if self.rank == 0:
            log(f"[{self.name}] stop signal: checkpoint {self.last_tag} written at step {self.state.step}"
                f"/{self.total_steps}; the requeued job resumes from it")
        raise Preempted(signum, self.state.step)

    def _end_epoch(self, epoch, loss_sum, loss_n, images, t_train, progress) -> dict:
        loss_sum, loss_n, images, t_sum = all_sum([loss_sum, loss_n, images, t_train])
        row = {"epoch": epoch + 1, "step": self.state.step,
               "loss": loss_sum / loss_n if loss_n else float("nan"),
               "lr": current_lr(self.optimizer),
               "img_per_s": images / (t_sum / self.world) if t_sum > 0 else 0.0}  # over the mean rank time
        row["val_top1"] = float("nan")
        if self.val_batches is not None:  # every rank its shard; the counts are summed
            acc = accuracy(self.engine.module, self.val_batches, self.device, self.precision)
            row["val_top1"] = acc.top1
            if epoch + 1 == self.recipe.epochs:
                self.final_val = acc  # the student's final val Top-1: final_metrics reuses it
        if self.rank == 0:
            log(f"[{self.name}] epoch {epoch + 1}/{self.recipe.epochs} done: loss {row['loss']:.4f} "
                f"val top-1 {row['val_top1']:.2f}% {row['img_per_s']:.1f} img/s "
                f"ETA {fmt_eta(progress.eta(self.state.step))}")
        return row

