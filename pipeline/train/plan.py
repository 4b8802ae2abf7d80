"""Preflight of a training run: the layout it will train with, checked before anything is queued.

`plan_run(spec, ranks)` needs neither a cluster nor converted data. It derives what the job would
derive (pipeline.train.engine.batch_layout, scaled_lr, the loop's steps per epoch), estimates the
memory per device, and raises PlanError naming the params key when the layout cannot work. The
launch command prints it (`python -m pipeline.launch --plan STAGE...`), and a SLURM stage checks
it before it submits (pipeline.launch.slurm), so a bad layout fails at once instead of after the
job waited in the queue.

Images per epoch, in order of preference: the betons' manifest (data/ffcv/manifest.json), the
dataset itself (the built-in set's params; the files under data.imagenet/train), else ImageNet-1K's
1,281,167 training images.

Memory per device: the tensors autograd saves for the backward pass, measured by running the
model's forward on fake tensors (torch's FakeTensorMode: shapes and dtypes, no arithmetic, no
memory) on the CPU at one image under the run's autocast, times the micro-batch; plus fp32
weights, gradients, AdamW's two moments (ZeRO-1/2: their share per rank) and the EMA teacher.
An estimate: the allocator's workspace and the backward's transient gradients come on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.launch.cluster import SubmissionError

from .engine import BatchLayout, BatchLayoutError, batch_layout, scaled_lr, zero_stage

IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1K's training set (ILSVRC-2012)
PRECISION_WORDS = {"bf16": "bf16 autocast over fp32 weights", "fp32": "fp32",
                   "auto-cpu": "fp32 (auto: bf16 autocast where the node's CPU has native bf16; memory for fp32)"}
GIB = 2**30


class PlanError(SubmissionError):
    """The run cannot work as configured; the message names the params key to change. A
    SubmissionError, as a request that does not fit the partition: nothing is submitted."""


@dataclass(frozen=True)
class Ranks:
    """Where the ranks run: SLURM's nodes x tasks per node (one task per GPU), or local processes."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int = 0

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_node else "cpu"


@dataclass(frozen=True)
class MemoryEstimate:
    activations_per_image: float  # bytes saved for backward per image
    micro_batch: int
    states: float  # bytes of weights, gradients, optimiser state and EMA teacher per rank

    @property
    def total(self) -> float:
        return self.activations_per_image * self.micro_batch + self.states


@dataclass(frozen=True)
class RunPlan:
    stage: str
    model: str
    img_size: int
    ranks: Ranks
    layout: BatchLayout
    micro_derived: bool
    lr: float
    images: int
    images_from: str
    steps_per_epoch: int
    epochs: int
    checkpoint_every: int
    keep_checkpoints: int
    precision: str
    zero_stage: int
    sync_bn: bool
    memory: MemoryEstimate

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lines(self) -> list[str]:
        r, lay, mem = self.ranks, self.layout, self.memory
        unit = "GPU" if r.gpus_per_node else "rank (CPU)"
        per_node = f"{r.tasks_per_node} tasks" + (f" x 1 GPU each ({r.gpus_per_node} GPUs per node)"
                                                  if r.gpus_per_node else " (CPU)")
        micro_note = "derived: batch_size / ranks" if self.micro_derived else "micro_batch_size"
        return [
            f"{self.stage}: {self.model} @ {self.img_size}",
            f"  ranks           {r.nodes} node(s) x {per_node} = world size {r.world_size} "
            f"({'NCCL' if r.gpus_per_node else 'gloo'})",
            f"  batch           global {lay.global_batch} = micro-batch {lay.micro_batch} ({micro_note}) x "
            f"accumulation {lay.accumulation} x {lay.world_size} ranks",
            f"  learning rate   {self.lr:.3g} (scaled to the global batch)",
            f"  steps           {self.steps_per_epoch:,} per epoch ({self.images:,} training images: "
            f"{self.images_from}) x {self.epochs} epochs = {self.total_steps:,}",
            f"  checkpoints     every {self.checkpoint_every:,} steps and at each epoch end "
            f"(about {self.total_steps // self.checkpoint_every + self.epochs:,} in all, {self.keep_checkpoints} kept)",
            f"  precision       {PRECISION_WORDS[self.precision]}; "
            f"ZeRO stage {self.zero_stage}; BatchNorm {'synced over the ranks' if self.sync_bn else 'per rank'}",
            f"  memory per {unit}  about {mem.total / GIB:.1f} GiB: activations {mem.activations_per_image / GIB:.3f} "
            f"GiB per image x {mem.micro_batch} + weights, gradients, AdamW state and EMA teacher "
            f"{mem.states / GIB:.2f} GiB (estimate; workspace not included)",
        ]


def train_images(spec) -> tuple[int, str]:
    """How many training images an epoch has, and where that number comes from."""
    from pipeline.data.manifest import ManifestError, load_manifest, split_entry

    try:
        return split_entry(load_manifest(spec.ffcv_dir), "train", spec.ffcv_dir)["images"], \
            f"the betons, {spec.ffcv_dir}"
    except ManifestError:
        pass
    data = spec.params.data
    if data.imagenet is None and spec.params.profile == "builtin":
        b = data.builtin
        return b.num_classes * b.train_per_class, "the built-in set (data.builtin)"
    if data.imagenet is None:
        return IMAGENET_TRAIN_IMAGES, "ImageNet-1K's count (data.imagenet not set)"
    train = Path(data.imagenet) / "train"
    if train.is_dir():
        n = sum(1 for d in train.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())
        return n, f"files under {train}, before the conversion's checks"
    return IMAGENET_TRAIN_IMAGES, f"ImageNet-1K's count ({train} not found here)"


def trace_memory(build, img_size: int, precision: str) -> tuple[int, float]:
    """(parameters, bytes autograd saves for backward in one training forward of one image) of the
    model `build()` makes, traced with fake tensors (no arithmetic) on the CPU, under bf16 autocast
    when `precision` is bf16."""
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[id(storage)] = storage.nbytes()  # views of one tensor count once
        return t

    try:
        with torch.device("meta"):  # no memory, no initialisation
            model = build().train()
    except NotImplementedError:  # an initialiser that reads values (some ablation rows): a real CPU build
        model = build().train()
    n_params = sum(p.numel() for p in model.parameters())
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        x = torch.empty(1, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
        with cast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    return n_params, float(sum(storages.values()))


def state_bytes(n_params: int, zero: int, world: int) -> float:
    """fp32 weights and gradients, AdamW's two fp32 moments (partitioned over the ranks from ZeRO-1,
    gradients from ZeRO-2), and the fp32 EMA teacher, per rank."""
    share = lambda stage: 1.0 / world if zero >= stage else 1.0  # noqa: E731
    return 4.0 * n_params * (1 + share(2) + 2 * share(1) + 1)


def plan_run(spec, ranks: Ranks, build) -> RunPlan:
    """The run `spec` (a pipeline.train.run.RunSpec) on `ranks`, its model made by `build()` (the
    run's own architecture: an ablation row's comes from its model factory); PlanError names the
    key at fault."""
    recipe, run = spec.recipe, spec.run
    section = f"{spec.kind}.{spec.params.profile}"
    try:
        layout = batch_layout(recipe, ranks.world_size)
    except BatchLayoutError as err:
        raise PlanError(f"{spec.stage}: {section}.{err.field}: {err}") from None
    if recipe.sync_bn and ranks.world_size > 1 and not ranks.gpus_per_node:
        raise PlanError(f"{spec.stage}: {section}.sync_bn: true needs GPUs (torch's SyncBatchNorm reduces on "
                        f"CUDA only) and these ranks run on CPUs")
    images, images_from = train_images(spec)
    steps = images // ranks.world_size // layout.micro_batch // layout.accumulation
    if recipe.max_steps_per_epoch is not None:
        steps = min(steps, recipe.max_steps_per_epoch)
        images_from += f"; capped at {section}.max_steps_per_epoch {recipe.max_steps_per_epoch}"
    if steps < 1:
        raise PlanError(f"{spec.stage}: {section}.batch_size: {images} training images make no optimiser step "
                        f"of {layout.global_batch}")
    precision = recipe.precision
    if precision == "auto":  # bf16 on GPUs; on CPUs the node's processor decides: fp32 estimated (the larger)
        precision = "bf16" if ranks.gpus_per_node else "auto-cpu"
    zero = zero_stage(recipe, ranks.world_size)
    n_params, per_image = trace_memory(build, run.img_size, "bf16" if precision == "bf16" else "fp32")
    memory = MemoryEstimate(per_image, layout.micro_batch, state_bytes(n_params, zero, ranks.world_size))
    return RunPlan(stage=spec.stage, model=run.model, img_size=run.img_size, ranks=ranks, layout=layout,
                   micro_derived=recipe.micro_batch_size is None, lr=scaled_lr(recipe), images=images,
                   images_from=images_from, steps_per_epoch=steps, epochs=recipe.epochs,
                   checkpoint_every=recipe.checkpoint_every_steps, keep_checkpoints=recipe.keep_checkpoints,
                   precision=precision, zero_stage=zero, sync_bn=recipe.sync_bn, memory=memory)

