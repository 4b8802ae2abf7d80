"""params.yaml, validated before anything runs.

Each section is a pydantic model that forbids unknown keys, so a typo or a wrong type is one
clear error naming the key, not a traceback from deep inside a stage.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.slurm_profiles import load_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data (issue 3): built-in set, FFCV conversion, loaders ---------------------------------


class BuiltinDataParams(Section):
    """The generated dataset used when no real dataset path is set (see pipeline/data/builtin.py)."""

    seed: int = 0
    num_classes: int = Field(10, ge=2, le=1000)
    train_per_class: int = Field(80, ge=1)
    val_per_class: int = Field(20, ge=1)
    v2_per_class: int = Field(10, ge=1)
    # Image sides are drawn uniformly in [min_side, max_side] (width and height separately).
    min_side: int = Field(448, ge=32)
    max_side: int = Field(576, ge=32)
    # JPEG quality drawn per image in [lo, hi], so files vary like real photographs do.
    jpeg_quality: tuple[int, int] = (80, 95)

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality} must satisfy 1 <= lo <= hi <= 100")
        return self


class ConvertParams(Section):
    """FFCV writer settings (pipeline/data/convert.py)."""

    # One beton set per maximum side; a loader at resolution r uses the smallest set whose
    # max side >= r / val_crop_pct (so the centre crop is never upsampled from a shrunk copy).
    max_sides: list[int] = Field(default_factory=lambda: [512, 896], min_length=1)
    write_mode: Literal["raw", "jpg", "smart", "proportion"] = "proportion"
    compress_probability: float = Field(0.5, ge=0.0, le=1.0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    num_workers: int = Field(2, ge=1)
    chunk_size: int = Field(100, ge=1)
    # A checkpoint of the betons being written at most this often (0: after every chunk); a
    # killed conversion resumes from the last one (pipeline/data/beton.py).
    checkpoint_every_s: float = Field(60.0, ge=0.0)
    # A split with more unreadable files than this fraction fails the conversion.
    max_unreadable_fraction: float = Field(0.01, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sides(self):
        bad = [s for s in self.max_sides if s < 32]
        if bad or len(set(self.max_sides)) != len(self.max_sides):
            raise ValueError(f"max_sides {self.max_sides} must be distinct sides >= 32")
        return self


class LoaderParams(Section):
    """Training and validation input pipelines (pipeline/data/loaders.py)."""

    backend: Literal["ffcv", "torchvision"] = "ffcv"
    # auto: the CPUs this rank was given (`workers()`); or a count
    num_workers: int | Literal["auto"] = "auto"
    os_cache: bool = True  # FFCV: page cache (shared by processes) rather than a private copy
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    train_interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    re_prob: float = Field(0.25, ge=0.0, le=1.0)
    re_mode: Literal["const", "rand", "pixel"] = "pixel"
    re_count: int = Field(1, ge=1)
    val_crop_pct: float = Field(0.875, gt=0.0, le=1.0)
    val_interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 0:
            raise ValueError(f"num_workers {v}: expected a count >= 0 or 'auto'")
        return v

    def workers(self) -> int:
        """Loader workers of this process. auto: the CPUs SLURM gave the task (SLURM_CPUS_PER_TASK),
        else this process's CPUs shared between the ranks on its node (LOCAL_WORLD_SIZE, exported by
        pipeline.launch). FFCV's threads and the training step share them: on a GPU node the step
        waits on the GPU, and on a CPU-only node the loader would otherwise idle behind the step."""
        if self.num_workers != "auto":
            return self.num_workers
        if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


class DataParams(Section):
    # Real dataset roots. null = use the built-in generated set (profile builtin only;
    # profile paper requires both, checked by pipeline.data.sources.resolve_sources).
    imagenet: str | None = None  # ImageNet-1K root holding train/<wnid>/ and val/<wnid>/
    imagenet_v2: str | None = None  # ImageNet-V2 matched-frequency root holding <class index>/
    builtin: BuiltinDataParams = BuiltinDataParams()
    convert: ConvertParams = ConvertParams()
    loader: LoaderParams = LoaderParams()


# --- training (issue 4): recipes per profile, one block per DVC stage, launching -----------------
# The values live in params.yaml, with the source of each choice; the defaults here only mirror
# the paper recipe so that a params file without these sections still validates.

SIZES = ("s", "b", "l")
# Stochastic depth per size (paper silent): Swin-T/S/B use 0.2/0.3/0.5 for 28M/50M/88M params.
DROP_PATH = {"s": 0.2, "b": 0.3, "l": 0.5}


class MixParams(Section):
    """timm Mixup/CutMix in batch mode (the mode EMA distillation needs)."""

    mixup_alpha: float = Field(0.8, ge=0.0)
    cutmix_alpha: float = Field(1.0, ge=0.0)
    prob: float = Field(1.0, ge=0.0, le=1.0)
    switch_prob: float = Field(0.5, ge=0.0, le=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)


class EmaParams(Section):
    """EMA teacher (Section 4.5): decay of the moving average, and alpha in y- = a y~ + (1 - a) y^."""

    decay: float = Field(0.99996, ge=0.0, lt=1.0)
    warmup: bool = False  # timm's decay ramp 1 - (1 + step)^(-2/3), capped at decay
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # 1.0 = plain EMA, no distillation target
    # alpha_t = alpha + (1 - alpha) * (the teacher's weight on its near-random start): trust the
    # teacher as that start fades (pipeline/train/ema_distill.py, docs/training.md)
    alpha_ramp: bool = False


class RecipeParams(Section):
    """One complete training recipe (optimiser, schedule, augmentation, engine, bookkeeping)."""

    epochs: int = Field(300, ge=1)
    warmup_epochs: float = Field(5.0, ge=0.0)
    batch_size: int = Field(1024, ge=1)  # global, over all ranks and accumulation steps
    # per rank per forward/backward; null: batch_size / ranks (no accumulation), pipeline.train.engine.batch_layout
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    lr_reference_batch: int = Field(1024, ge=1)  # lr is scaled by batch_size / lr_reference_batch
    warmup_lr: float = Field(1e-6, ge=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    clip_grad: float | None = Field(5.0, gt=0.0)
    drop_path_scale: float = Field(1.0, ge=0.0)  # multiplies each run's drop_path_rate
    # Cap on optimiser steps per epoch (null = the whole training set); the CPU smoke scale
    # uses it to bound a run's images without shrinking the dataset other stages share.
    max_steps_per_epoch: int | None = Field(None, ge=1)
    mix: MixParams = MixParams()
    ema: EmaParams = EmaParams()
    zero_stage: Literal[0, 1, 2, 3] = 2
    # bf16 = autocast over fp32 weights on every device; auto: bf16 on GPU and on CPUs with native bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # BatchNorm statistics over all ranks' micro-batches in each forward (GPU only); false: per rank,
    # running statistics averaged over the ranks after every optimiser step
    sync_bn: bool = False
    checkpoint_every_steps: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every_steps: int = Field(50, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    throughput_batch: int = Field(64, ge=1)
    throughput_iters: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _batches(self):
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be < epochs {self.epochs}")
        return self


class TrainRun(Section):
    """One pretraining stage, train_<key> in dvc.yaml."""

    model: Literal["hiri_vit_s", "hiri_vit_b", "hiri_vit_l"]
    img_size: Literal[224, 384, 448, 768]
    drop_path_rate: float = Field(ge=0.0, lt=1.0)
    seed: int = 0


class FinetuneRun(TrainRun):
    """One fine-tuning stage, finetune_<key> in dvc.yaml; starts from train_<init_from>'s weights."""

    init_from: str


def _train_runs() -> dict[str, TrainRun]:
    return {f"hiri_{s}_{r}": TrainRun(model=f"hiri_vit_{s}", img_size=r, drop_path_rate=DROP_PATH[s])
            for s in SIZES for r in (224, 384, 448)}


def _finetune_runs() -> dict[str, FinetuneRun]:
    return {f"hiri_{s}_768": FinetuneRun(model=f"hiri_vit_{s}", img_size=768, drop_path_rate=DROP_PATH[s],
                                         init_from=f"hiri_{s}_448") for s in SIZES}


class TrainParams(Section):
    builtin: RecipeParams = RecipeParams()
    paper: RecipeParams = RecipeParams()
    runs: dict[str, TrainRun] = Field(default_factory=_train_runs)

    def recipe(self, profile: str) -> RecipeParams:
        return getattr(self, profile)

    def run(self, key: str) -> TrainRun:
        if key not in self.runs:
            raise KeyError(f"no run {key!r} in params.yaml; known runs: {sorted(self.runs)}")
        return self.runs[key]


_FT_PAPER = RecipeParams(epochs=30, warmup_epochs=0.0, lr=1e-5, weight_decay=1e-8, min_lr=1e-7)


class FinetuneParams(TrainParams):
    builtin: RecipeParams = _FT_PAPER
    paper: RecipeParams = _FT_PAPER
    runs: dict[str, FinetuneRun] = Field(default_factory=_finetune_runs)


class AblationRun(Section):
    """One ablation stage, ablation_<key> in dvc.yaml: a row of Table 7, 8 or 9 (the paper data's
    `stage:` says which), trained with the pretraining recipe of the profile (train.<profile>)."""

    # a model registered by pipeline.models.ablations (or hiri_vit_s, or timm's own baselines);
    # checked before launching by stages/ablation.py
    model: str
    img_size: int = Field(ge=32)  # the row's resolution (the data's; Table 9's timm models take any)
    drop_path_rate: float | None = Field(ge=0.0, lt=1.0)  # null: the model has no stochastic depth (HRNet)
    distill: bool  # EMA distillation (4.5); false: the target is the CutMix/Mixup label (alpha = 1)
    seed: int = 0

    def recipe(self, base: RecipeParams) -> RecipeParams:
        """The pretraining recipe this run trains with: `base`, with EMA distillation switched off
        (alpha 1, so no ramp) unless the run distils. The EMA teacher itself is kept either way."""
        if self.distill:
            return base
        return base.model_copy(update={"ema": base.ema.model_copy(update={"alpha": 1.0, "alpha_ramp": False})})


class AblationParams(Section):
    runs: dict[str, AblationRun] = Field(default_factory=dict)

    def run(self, key: str) -> AblationRun:
        if key not in self.runs:
            raise KeyError(f"no ablation run {key!r} in params.yaml; known runs: {sorted(self.runs)}")
        return self.runs[key]


class LaunchParams(Section):
    """How a training stage starts its processes (pipeline/launch/)."""

    # local: submitit LocalExecutor on this machine; slurm: submitit on SLURM, resources from
    # slurm/profiles/<profile>.yaml (pipeline/slurm_profiles.py).
    launcher: Literal["local", "slurm"] = "local"
    profile: str | None = None  # slurm only: a file stem in slurm/profiles/
    tasks: int = Field(1, ge=1)  # processes = torch.distributed ranks (local; SLURM: from the profile)
    timeout_min: int = Field(24 * 60, ge=1)

    @model_validator(mode="after")
    def _slurm_profile(self):
        if self.launcher == "slurm":
            if not self.profile:
                raise ValueError("launcher slurm needs launch.profile (a file stem in slurm/profiles/)")
            load_profile(self.profile)  # unknown profile or bad field: ProfileError naming it
        return self


# --- transfer (issue 11): COCO detection, ADE20K segmentation (pipeline/transfer) -------------


class CocoBuiltinParams(Section):
    """The generated COCO-layout set (pipeline/transfer/builtin.py): all 80 COCO categories are
    declared, objects are drawn from the first `categories` of them."""

    train_images: int = Field(160, ge=1)
    val_images: int = Field(40, ge=1)
    min_side: int = Field(256, ge=32)
    max_side: int = Field(384, ge=32)
    objects: tuple[int, int] = (1, 4)  # objects per image, drawn in [lo, hi]
    # An object's diameter as a share of the image's short side, drawn uniformly in [lo, hi]: the
    # detectors see it at that share of their input's short side (transfer.detection.*.min_size).
    # 0.3-0.7 at the built-in min_size 192 is 58-134 px, inside the reach of RetinaNet's smallest
    # anchors at HIRI's doubled strides (64-101 px on P3, stride 16); 0.15-0.5 (29-96 px) left the
    # smaller objects unmatched at IoU 0.5 and RetinaNet at box AP50 6.4 (docs/transfer.md).
    object_size: tuple[float, float] = (0.3, 0.7)
    categories: int = Field(6, ge=1, le=80)
    jpeg_quality: tuple[int, int] = (80, 95)

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"object_size {list(self.object_size)} must be shares of the short side, "
                             f"0 < lo <= hi <= 1")
        return self


class AdeBuiltinParams(Section):
    """The generated ADE20K-layout set: index masks 0..150, classes from the first `classes`."""

    train_images: int = Field(160, ge=1)
    val_images: int = Field(40, ge=1)
    min_side: int = Field(256, ge=32)
    max_side: int = Field(384, ge=32)
    objects: tuple[int, int] = (2, 5)
    classes: int = Field(8, ge=2, le=150)
    jpeg_quality: tuple[int, int] = (80, 95)


class TransferBuiltinParams(Section):
    seed: int = 0
    coco: CocoBuiltinParams = CocoBuiltinParams()
    ade20k: AdeBuiltinParams = AdeBuiltinParams()


class DetectionRecipe(Section):
    """One COCO fine-tuning recipe (RetinaNet and Mask R-CNN share it, as PVTv2's 1x configs do)."""

    epochs: int = Field(12, ge=1)  # 5.2: the 1x schedule
    lr_steps: list[int] = Field(default_factory=lambda: [8, 11])  # mmdet 1x: x0.1 after epochs 8 and 11
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0)
    batch_size: int = Field(16, ge=1)  # 5.2 (global)
    micro_batch_size: int = Field(2, ge=1)  # images per rank per step (mmdet: 2 per GPU)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = Field(500, ge=0)  # mmdet 1x: linear warm-up
    warmup_ratio: float = Field(0.001, gt=0.0, le=1.0)
    clip_grad: float | None = Field(None, gt=0.0)
    min_size: int = Field(1600, ge=32)  # 5.2: shorter side
    max_size: int = Field(2666, ge=32)  # 5.2: longer side at most
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    roi_batch_size: int = Field(512, ge=1)  # Mask R-CNN: RoIs sampled per training image (mmdet 1x: 512)
    max_iters_per_epoch: int | None = Field(None, ge=1)  # CPU scale: cap the steps of an epoch
    weights: Literal["student", "ema"] = "ema"
    backbone_bn: Literal["train", "frozen", "sync"] = "sync"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every_iters: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every_iters: int = Field(50, ge=1)
    eval_batch_size: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        if sorted(self.lr_steps) != self.lr_steps or any(not 0 < s <= self.epochs for s in self.lr_steps):
            raise ValueError(f"lr_steps {self.lr_steps} must be increasing epochs in 1..{self.epochs}")
        return self


class SegmentationRecipe(Section):
    """The ADE20K UPerNet recipe (5.3, and Swin's 160k config where 5.3 is silent)."""

    iters: int = Field(160_000, ge=1)  # 5.3
    warmup_iters: int = Field(1500, ge=0)  # 5.3
    warmup_ratio: float = Field(1e-6, gt=0.0, le=1.0)  # Swin/mmseg
    poly_power: float = Field(1.0, gt=0.0)  # 5.3: linear decay
    min_lr: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1)  # 5.3
    micro_batch_size: int = Field(2, ge=1)
    lr: float = Field(6e-5, gt=0.0)  # 5.3
    weight_decay: float = Field(0.01, ge=0.0)  # 5.3
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(None, gt=0.0)
    scale: tuple[int, int] = (4096, 1024)  # twice mmseg's ADE20K (2048, 512), rescaled by ratio_range
    ratio_range: tuple[float, float] = (0.5, 2.0)  # 5.3
    crop_size: int = Field(1024, ge=32)  # twice mmseg's 512 (docs/transfer.md)
    cat_max_ratio: float = Field(0.75, gt=0.0, le=1.0)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    photometric: bool = True
    aux_weight: float = Field(0.4, ge=0.0)  # Swin's UPerNet: auxiliary FCN head
    weights: Literal["student", "ema"] = "ema"
    backbone_bn: Literal["train", "frozen", "sync"] = "sync"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    eval_every_iters: int = Field(16_000, ge=1)
    checkpoint_every_iters: int = Field(4000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every_iters: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.warmup_iters >= self.iters and self.warmup_iters > 0:
            raise ValueError(f"warmup_iters {self.warmup_iters} must be < iters {self.iters}")
        return self


class TransferRun(Section):
    """One transfer stage (its key is the DVC stage name): the model and the pretraining it starts from."""

    model: Literal["retinanet", "maskrcnn", "upernet"]
    init_from: str  # a train.runs key; its stage's model.pt holds the backbone weights
    drop_path_rate: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0


def _transfer_runs() -> dict[str, TransferRun]:
    runs = {}
    for s, dp in (("s", 0.2), ("b", 0.3)):
        for model in ("retinanet", "maskrcnn"):
            runs[f"coco_{model}_hiri_{s}"] = TransferRun(model=model, init_from=f"hiri_{s}_448", drop_path_rate=dp)
        runs[f"ade20k_upernet_hiri_{s}"] = TransferRun(model="upernet", init_from=f"hiri_{s}_448", drop_path_rate=dp)
    return runs


class TransferParams(Section):
    # Real dataset roots; null = the built-in generated sets (profile builtin only).
    coco: str | None = None  # holds annotations/instances_{train,val}2017.json, train2017/, val2017/
    ade20k: str | None = None  # ADEChallengeData2016: images/{training,validation}/, annotations/{...}/
    builtin: TransferBuiltinParams = TransferBuiltinParams()
    # More unusable images or annotations than this fraction: the dataset cannot be trusted
    max_unusable_fraction: float = Field(0.05, ge=0.0, le=1.0)
    detection: dict[Literal["builtin", "paper"], DetectionRecipe] = Field(
        default_factory=lambda: {"builtin": DetectionRecipe(), "paper": DetectionRecipe()})
    segmentation: dict[Literal["builtin", "paper"], SegmentationRecipe] = Field(
        default_factory=lambda: {"builtin": SegmentationRecipe(), "paper": SegmentationRecipe()})
    runs: dict[str, TransferRun] = Field(default_factory=_transfer_runs)

    def run(self, key: str) -> TransferRun:
        if key not in self.runs:
            raise KeyError(f"no transfer run {key!r} in params.yaml; known runs: {sorted(self.runs)}")
        return self.runs[key]


# --- report (issue 6): the paper beside ours, stages/report.py -----------------------------------


class Fig1Params(Section):
    """Fig. 1 measured on the machine running the report: GFLOPs and batch-1 latency per resolution."""

    hiri_model: Literal["hiri_vit_s", "hiri_vit_b", "hiri_vit_l"] = "hiri_vit_s"
    hiri_resolutions: list[int] = Field(default_factory=lambda: [224, 384, 448], min_length=1)
    swin_model: str = "swin_tiny_patch4_window7_224"
    swin_resolutions: list[int] = Field(default_factory=lambda: [224, 384], min_length=1)
    # Swin's window per resolution: 7 at 224, 12 at 384 as the official 384 models.
    swin_window: dict[int, int] = Field(default_factory=lambda: {224: 7, 384: 12})
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)
    threads: int = Field(1, ge=1)  # one thread: cheap beside other jobs, and the same for every model

    @model_validator(mode="after")
    def _windows(self):
        missing = [r for r in self.swin_resolutions if r not in self.swin_window]
        if missing:
            raise ValueError(f"swin_window has no window size for resolutions {missing}")
        bad = [r for r in self.swin_resolutions if (r // 32) % self.swin_window[r]]
        if bad:
            raise ValueError(f"swin resolutions {bad}: the last stage's grid (res/32) must divide by the window")
        return self


class ReportParams(Section):
    fig1: Fig1Params = Fig1Params()


class Params(Section):
    profile: Literal["builtin", "paper"] = "builtin"
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    launch: LaunchParams = LaunchParams()
    report: ReportParams = ReportParams()
    transfer: TransferParams = TransferParams()
    ablation: AblationParams = AblationParams()

    def training_run(self, kind: str, key: str) -> TrainRun | FinetuneRun | AblationRun:
        """The run of DVC stage `<kind>_<key>`; KeyError naming the known runs of its section."""
        sections = {"train": self.train, "finetune": self.finetune, "ablation": self.ablation}
        if kind not in sections:
            raise ValueError(f"training kind must be one of {sorted(sections)}, got {kind!r}")
        return sections[kind].run(key)

    @model_validator(mode="after")
    def _finetune_sources(self):
        for key, run in self.finetune.runs.items():
            if run.init_from not in self.train.runs:
                raise ValueError(f"finetune.runs.{key}.init_from: no train run {run.init_from!r} "
                                 f"(known: {sorted(self.train.runs)})")
        for key, run in self.transfer.runs.items():
            if run.init_from not in self.train.runs:
                raise ValueError(f"transfer.runs.{key}.init_from: no train run {run.init_from!r} "
                                 f"(known: {sorted(self.train.runs)})")
            if not key.startswith(("coco_", "ade20k_")) or (key.startswith("ade20k_") != (run.model == "upernet")):
                raise ValueError(f"transfer.runs.{key}: a COCO run's key starts with coco_ (retinanet, maskrcnn), "
                                 f"an ADE20K run's with ade20k_ (upernet); got model {run.model!r}")
        return self


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the offending key."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid parameters:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<root>"
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ParamsError("\n".join(lines)) from None
