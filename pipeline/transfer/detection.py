"""RetinaNet and Mask R-CNN on HIRI-ViT (Section 5.2, Table 4), built from torchvision's detection
models and set to the mmdetection 1x configs the paper's baselines used (PVTv2's
`retinanet_pvt_v2_b2_fpn_1x_coco.py` and `mask_rcnn_pvt_v2_b2_fpn_1x_coco.py`). Every difference
to torchvision's defaults is set here on purpose and listed in docs/transfer.md:

RetinaNet   P3-P5 from the backbone, P6 = conv(C5), P7 = conv(P6) with no ReLU between
            (mmdet `add_extra_convs='on_input'`; torchvision's LastLevelP6P7 puts a ReLU before P7);
            100 detections per image (torchvision: 300).
Mask R-CNN  FPN on four levels plus P6 by max-pool; 1000 RPN proposals after NMS in training
            (torchvision: 2000); RoIAlign with aligned=True and adaptive sampling (mmdet
            RoIAlign(sampling_ratio=0, aligned=True); torchvision's MultiScaleRoIAlign: aligned=False,
            sampling 2).
Both        the FPN Xavier-initialised (5.2: "all the other newly added layers are initialized with
            Xavier"; mmdet's FPN likewise); the heads keep their detectors' own initialisation (the
            focal-loss prior of RetinaNet's classifier is part of the method); inputs padded to a
            multiple of the backbone's total stride, 64 (`size_divisible`).

Which stages: the paper feeds twice the baselines' input (1600x1200 against 800x600), so stages
2-5 (strides 8-64) see the baselines' stride-4..32 grids. Mask R-CNN's FPN takes stages 2-5 and
RetinaNet's P3-P5 stages 3-5, as the baselines take C2-C5 and C3-C5; docs/transfer.md shows the
parameter counts this reproduces against Table 4.

Labels: RetinaNet predicts classes 0..79 (no background); Mask R-CNN 1..80 with background 0.
`LABEL_OFFSET` says which, for mapping back to COCO category ids.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from .backbone import DenseBackbone

NUM_CLASSES = 80
FPN_CHANNELS = 256
TOTAL_STRIDE = 64
LABEL_OFFSET = {"retinanet": 0, "maskrcnn": 1}
# 0-based backbone stages feeding the FPN (see the module docstring)
STAGES = {"retinanet": (2, 3, 4), "maskrcnn": (1, 2, 3, 4)}


class P6P7OnInput(ExtraFPNBlock):
    """mmdet's extra RetinaNet levels: P6 = conv3x3/2(C5), P7 = conv3x3/2(P6), no ReLU between."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)

    def forward(self, results, x, names):
        p6 = self.p6(x[-1])
        p7 = self.p7(p6)
        return results + [p6, p7], names + ["p6", "p7"]


class BackboneFPN(nn.Module):
    """HIRI-ViT stage maps into an FPN; the OrderedDict of levels torchvision's detectors take.
    `body`, if given, is any timm `features_only` model used in place of `arch`'s `stages` (the
    benchmark's baseline backbones, bench/transfer.py)."""

    def __init__(self, arch: str, stages: tuple[int, ...], extra: str, drop_path_rate: float = 0.0,
                 body: nn.Module | None = None):
        super().__init__()
        self.body = DenseBackbone(arch, stages, drop_path_rate) if body is None else body
        channels = self.body.feature_info.channels()
        extra_block = P6P7OnInput(channels[-1], FPN_CHANNELS) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(channels, FPN_CHANNELS, extra_blocks=extra_block)
        self.out_channels = FPN_CHANNELS
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's level mapping with mmdet's RoIAlign: aligned=True (half-pixel offset) and
    `sampling_ratio` 0 (adaptive: ceil(roi size / output size) samples per bin)."""

    def forward(self, x, boxes, image_shapes):
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feat, rois[idx], self.output_size, spatial_scale=scale,
                                 sampling_ratio=self.sampling_ratio, aligned=True).to(out.dtype)
        return out


def _anchors(sizes_at_stride1: tuple[float, ...], strides: tuple[int, ...], ratios=(0.5, 1.0, 2.0)) -> AnchorGenerator:
    """One anchor set per level: `sizes_at_stride1` times the level's stride (mmdet's base scales)."""
    return AnchorGenerator(tuple(tuple(round(s * stride) for s in sizes_at_stride1) for stride in strides),
                           (ratios,) * len(strides))


def _level_strides(backbone: BackboneFPN, extra_levels: int) -> tuple[int, ...]:
    """The FPN levels' strides: the body's maps' (timm's feature_info), then each extra level 2x."""
    strides = tuple(backbone.body.feature_info.reduction())
    return strides + tuple(strides[-1] * 2 ** i for i in range(1, extra_levels + 1))


def build_detector(model: str, arch: str, *, min_size: int, max_size: int, mean, std,
                   drop_path_rate: float = 0.0, body: nn.Module | None = None, roi_batch_size: int = 512) -> nn.Module:
    """`model` 'retinanet' or 'maskrcnn' on backbone `arch` (hiri_vit_s / _b / _l), 80 COCO classes.
    `body`: a timm `features_only` model in place of `arch`'s STAGES[model] (see BackboneFPN).
    `roi_batch_size`: Mask R-CNN's RoIs sampled per training image (mmdet 1x: 512, a quarter
    positive); the CPU recipe samples fewer, the RoI and mask heads being most of its step."""
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(mean), image_std=list(std),
                  size_divisible=TOTAL_STRIDE)
    if model == "retinanet":
        stages = STAGES[model]
        backbone = BackboneFPN(arch, stages, "p6p7", drop_path_rate, body)
        # mmdet: octave_base_scale 4, 3 scales per octave, ratios 0.5/1/2, at every level's stride
        anchors = _anchors(tuple(4 * 2 ** (i / 3) for i in range(3)), _level_strides(backbone, 2))
        return RetinaNet(backbone, num_classes=NUM_CLASSES, anchor_generator=anchors, detections_per_img=100,
                         score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000, **common)
    if model == "maskrcnn":
        stages = STAGES[model]
        backbone = BackboneFPN(arch, stages, "maxpool", drop_path_rate, body)
        names = [str(i) for i in range(len(backbone.body.feature_info.channels()))]
        # mmdet RPN: scale 8 at every level's stride, ratios 0.5/1/2
        anchors = _anchors((8.0,), _level_strides(backbone, 1))
        return MaskRCNN(backbone, num_classes=NUM_CLASSES + 1, rpn_anchor_generator=anchors,
                        rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
                        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
                        box_roi_pool=AlignedMultiScaleRoIAlign(names, 7, sampling_ratio=0),
                        mask_roi_pool=AlignedMultiScaleRoIAlign(names, 14, sampling_ratio=0),
                        box_detections_per_img=100, box_batch_size_per_image=roi_batch_size, **common)
    raise ValueError(f"model must be 'retinanet' or 'maskrcnn', got {model!r}")
