"""HIRI-ViT as the backbone of a detector or segmenter: timm's `features_only` maps of the
chosen stages, started from a pretraining stage's model.pt.

Which weights: a pretraining stage saves both the student and its EMA teacher
(`state_dict`, `state_dict_ema`); `weights: ema | student` in the transfer recipe picks one
(docs/transfer.md "Which weights"). Whichever it is, every backbone tensor must come from the
file: a load that would leave one at its random initialisation fails, naming it. The class-token
block, final norm and classifier are the only tensors left behind.

BatchNorm (the HR stem and the IRDS downsamplings hold BatchNorm; the transformer stages hold
LayerNorm): `backbone_bn` = `train` (ordinary BatchNorm on each rank's own images), `frozen`
(the pretrained statistics and affine, timm's `freeze_batch_norm_2d`) or `sync` (statistics over
all ranks, `nn.SyncBatchNorm`; with one rank, or on a CPU where SyncBatchNorm does not run, it is
`train`). docs/transfer.md "BatchNorm with 2 images per GPU" says which the recipes use and why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import timm
import torch
from timm.layers import LayerNorm2d, freeze_batch_norm_2d
from torch import nn

import pipeline.models  # noqa: F401 - registers hiri_vit_* with timm
from pipeline.models.hiri_vit import check_stem_stride

# What a detector's or segmenter's backbone leaves out of the classifier it was trained as.
CLASSIFIER_PREFIXES = ("cls_block.", "norm.", "head.")


class BackboneWeightsError(ValueError):
    """The pretraining weights do not fit the backbone; the message names the tensors."""


class DenseBackbone(nn.Module):
    """The stage maps `out_indices` (0-based, of the five) of `arch`, NCHW, from one pass, each
    through a LayerNorm over channels. The maps leave the stages un-normalised (the classifier's
    norm follows stage 5 only), and the last two reach a standard deviation of about 27 and 63
    on the built-in set: a detection head fed those saturates (Mask R-CNN's mask loss at 15 in
    its first steps). Swin's dense backbones, whose setting 5.2 and 5.3 follow, put a LayerNorm
    on each output for the same reason (mmdet's `norm{i}`); new layers, initialised to identity
    scale. The 4x4 stem (the 448 model's) is the one the dense tasks fine-tune: total stride 64."""

    def __init__(self, arch: str, out_indices: Sequence[int], drop_path_rate: float = 0.0, stem_stride: int = 4):
        super().__init__()
        self.body = timm.create_model(arch, features_only=True, out_indices=tuple(out_indices), img_size=448,
                                      stem_stride=stem_stride, drop_path_rate=drop_path_rate)
        self.feature_info = self.body.feature_info
        self.norms = nn.ModuleList(LayerNorm2d(c) for c in self.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [norm(f) for norm, f in zip(self.norms, self.body(x))]


def pretrained_state(path: str | Path, weights: str) -> tuple[dict, dict]:
    """(backbone state dict, the file's metadata) of a pretraining stage's model.pt."""
    key = {"ema": "state_dict_ema", "student": "state_dict"}.get(weights)
    if key is None:
        raise ValueError(f"weights must be 'ema' or 'student', got {weights!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise BackboneWeightsError(f"{path}: no {key!r} in this file (a pretraining stage's model.pt holds "
                                   f"'state_dict' and 'state_dict_ema')")
    state = {k: v for k, v in ckpt[key].items() if not k.startswith(CLASSIFIER_PREFIXES)}
    meta = {k: v for k, v in ckpt.items() if not k.startswith("state_dict")}
    return state, meta


def load_backbone(backbone: nn.Module, path: str | Path, weights: str) -> dict:
    """Load a pretraining stage's weights into a DenseBackbone; return the file's metadata. Every
    backbone tensor must be in the file and every file tensor must fit (the output norms are new)."""
    state, meta = pretrained_state(path, weights)
    target = backbone.body.model  # timm's FeatureGetterNet keeps the network as `.model`
    if "_extra_state" in state:
        try:
            check_stem_stride(state["_extra_state"], target.stem_stride)
        except ValueError as err:
            raise BackboneWeightsError(f"{path}: {err}") from None
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state)
                       if hasattr(own[k], "shape") and own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        def some(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = [f"{label}: {some(keys)}" for label, keys in
                 (("left at random initialisation (not in the file)", missing), ("in the file but not in the "
                  "backbone", unexpected), ("of another shape", misshapen)) if keys]
        raise BackboneWeightsError(f"{path} ({meta.get('arch')}@{meta.get('img_size')}) does not fit the "
                                   f"{type(target).__name__} backbone: " + "; ".join(parts))
    target.load_state_dict(state, strict=True)
    return meta


def set_batch_norm(model: nn.Module, backbone: nn.Module, mode: str, distributed: bool) -> nn.Module:
    """Apply the recipe's `backbone_bn`; return the model (replaced when converted). `frozen`
    freezes the backbone's BatchNorm only; `sync` converts every BatchNorm of the model, heads
    included (mmseg's SyncBN heads), where SyncBatchNorm runs: several CUDA ranks."""
    if mode not in ("train", "frozen", "sync"):
        raise ValueError(f"backbone_bn must be 'train', 'frozen' or 'sync', got {mode!r}")
    if mode == "frozen":
        freeze_batch_norm_2d(backbone)  # replaces the BatchNorm children in place
    if mode == "sync" and distributed and torch.cuda.is_available():
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad a NCHW batch at the bottom and right to sides divisible by `multiple` (the backbone's
    total stride), as torchvision's detection transform does with `size_divisible`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph), value=value)
    return x
