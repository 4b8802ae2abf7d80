"""Table 9: HIRI-ViT's five-stage, two-branch recipe applied to HRNet-W18, PVTv2-B2 and DaViT-Tiny.

Section 5.7 says only that "our five-stage structure with two-branch design" scales each
backbone from 224 to 448 inputs; the rows' own counts pin down how. Each "+ HIRI-ViT" row adds
about 0.1M parameters to its backbone, so the backbone's four stages stay whole (turning any of
PVTv2's or DaViT's attention stages into HR blocks would remove far more than that), and only
what lies before its first stage changes: its stride-4 stem is replaced by

    HR-stem (4x4, Section 4.1) -> a stage of two HR blocks (4.2, Table 1's E1 = 4)
    -> the backbone's own stride-2 downsampling layer, into its first width

i.e. HIRI-ViT-S's stem and stage 1 (width 32, the S size these ~25M backbones compare with), as
a fifth stage in front of the backbone's four. At 448 that stage runs at 1/4 of the input and
hands the backbone a 1/8 map: the grids its stages have at 224. The transition into the
backbone is the backbone's own downsampling (PVTv2: 3x3 stride-2 overlapping patch embedding;
DaViT: LayerNorm + 2x2 stride-2 conv; HRNet: its stem's second 3x3 stride-2 conv + BN + ReLU),
not IRDS-a: IRDS is a separate design of the paper (Table 7 row 6), and with IRDS-a the PVTv2 row
lands 5.8% over the paper's GFLOPs (docs/ablations.md weighs both).

The baselines themselves are timm's hrnet_w18, pvt_v2_b2 and davit_tiny at 224.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.davit import DaVit, Downsample
from timm.models.hrnet import HighResolutionNet, HighResolutionNetFeatures, cfg_cls
from timm.models.pvt_v2 import OverlapPatchEmbed, PyramidVisionTransformerV2
from torch import nn

from ..blocks import HRBlock, HRStem
from ..hiri_vit import HiriViT

FRONT_WIDTH = 32  # HIRI-ViT-S's C1 and HR-stem width (Table 1; docs/model.md)
FRONT_DEPTH = 2  # HIRI-ViT-S's stage 1 (Table 1)
FRONT_MLP_RATIO = 4.0  # Table 1's E1


class HiriFront(nn.Module):
    """HR-stem (total stride 4) -> `FRONT_DEPTH` HR blocks: the added high-resolution stage."""

    def __init__(self, in_chans: int, width: int = FRONT_WIDTH):
        super().__init__()
        self.stem = HRStem(in_chans, width, width, stride=4)
        self.blocks = nn.Sequential(*[HRBlock(width, FRONT_MLP_RATIO) for _ in range(FRONT_DEPTH)])
        self.apply(HiriViT._init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def _shift_reductions(infos: list[dict]) -> None:
    """The backbone's maps now sit one stride-2 step deeper (the front's extra stage)."""
    for info in infos:
        info["reduction"] *= 2


class PvtV2Hiri(PyramidVisionTransformerV2):
    """PVTv2 whose 7x7 stride-4 patch embedding is replaced by HiriFront + a 3x3 stride-2 one."""

    def __init__(self, embed_dims: tuple[int, ...], **kwargs):
        super().__init__(embed_dims=embed_dims, **kwargs)
        self.patch_embed = nn.Sequential(
            HiriFront(self.in_chans),
            OverlapPatchEmbed(patch_size=3, stride=2, in_chans=FRONT_WIDTH, embed_dim=embed_dims[0]),
        )
        _shift_reductions(self.feature_info)


class DavitHiri(DaVit):
    """DaViT whose 7x7 stride-4 stem is replaced by HiriFront + DaViT's own 2x2 downsampling."""

    def __init__(self, embed_dims: tuple[int, ...], down_kernel_size: int = 2, norm_eps: float = 1e-5, **kwargs):
        super().__init__(embed_dims=embed_dims, down_kernel_size=down_kernel_size, norm_eps=norm_eps, **kwargs)
        self.stem = nn.Sequential(
            HiriFront(self.in_chans),
            Downsample(FRONT_WIDTH, embed_dims[0], kernel_size=down_kernel_size,
                       norm_layer=partial(LayerNorm2d, eps=norm_eps)),
        )
        _shift_reductions(self.feature_info)


def _hrnet_front(model: HighResolutionNet, in_chans: int) -> None:
    """HRNet's stem is two stride-2 3x3 convs (+BN+ReLU) to 64 channels: HiriFront takes the
    first one's place, the second now reads the front's width."""
    model.conv1 = HiriFront(in_chans)
    model.bn1, model.act1 = nn.Identity(), nn.Identity()
    model.conv2 = nn.Conv2d(FRONT_WIDTH, model.conv2.out_channels, 3, 2, 1, bias=False)
    infos = model.feature_info if isinstance(model.feature_info, list) else model.feature_info.info
    _shift_reductions(infos)
    infos[0].update(num_chs=FRONT_WIDTH, reduction=4)  # timm's "stem" tap (after conv1): the front's output


def _fronted_hrnet(base: type[HighResolutionNet]) -> type[HighResolutionNet]:
    """`base` with the front in HRNet's stem: timm answers HRNet's features_only with a subclass
    of its own (HighResolutionNetFeatures), so both classes need it."""

    class Fronted(base):
        def __init__(self, cfg: dict, in_chans: int = 3, **kwargs):
            super().__init__(cfg, in_chans=in_chans, **kwargs)
            _hrnet_front(self, in_chans)

    Fronted.__name__ = Fronted.__qualname__ = base.__name__.replace("HighResolutionNet", "HrnetHiri")
    return Fronted


HrnetHiri = _fronted_hrnet(HighResolutionNet)
HrnetHiriFeatures = _fronted_hrnet(HighResolutionNetFeatures)


def _cfg(first_conv: str, classifier: str) -> dict:
    return dict(
        url="", num_classes=1000, input_size=(3, 448, 448), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv=first_conv, classifier=classifier,
    )


default_cfgs = generate_default_cfgs({
    "pvt_v2_b2_hiri.untrained_448": _cfg("patch_embed.0.stem.conv1.0.0", "head"),
    "davit_tiny_hiri.untrained_448": _cfg("stem.0.stem.conv1.0.0", "head.fc"),
    "hrnet_w18_hiri.untrained_448": _cfg("conv1.stem.conv1.0.0", "classifier"),
})


def _no_weights(variant: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{variant}: no published weights exist")


def _create_staged_backbone(cls: type, variant: str, pretrained: bool, args: dict, kwargs: dict) -> nn.Module:
    """PVTv2's and DaViT's own timm factory, with our class (their feature extraction flattens the
    stage sequence)."""
    _no_weights(variant, pretrained)
    out_indices = kwargs.pop("out_indices", tuple(range(len(args["depths"]))))
    return build_model_with_cfg(cls, variant, False, feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                                **dict(args, **kwargs))


@register_model
def pvt_v2_b2_hiri(pretrained: bool = False, **kwargs) -> PvtV2Hiri:
    """Table 9 row 4: PVTv2-B2 (+ HIRI-ViT) at 448 (timm's pvt_v2_b2 arguments)."""
    args = dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
    return _create_staged_backbone(PvtV2Hiri, "pvt_v2_b2_hiri", pretrained, args, kwargs)


@register_model
def davit_tiny_hiri(pretrained: bool = False, **kwargs) -> DavitHiri:
    """Table 9 row 6: DaViT-Tiny (+ HIRI-ViT) at 448 (timm's davit_tiny arguments)."""
    args = dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_staged_backbone(DavitHiri, "davit_tiny_hiri", pretrained, args, kwargs)


@register_model
def hrnet_w18_hiri(pretrained: bool = False, **kwargs) -> HighResolutionNet:
    """Table 9 row 2: HRNet-W18 (+ HIRI-ViT) at 448."""
    _no_weights("hrnet_w18_hiri", pretrained)
    model_cls, kwargs_filter = HrnetHiri, None
    if kwargs.pop("features_only", False):  # timm's HRNet answers features_only with its own class
        model_cls, kwargs_filter = HrnetHiriFeatures, ("num_classes", "global_pool")
    return build_model_with_cfg(model_cls, "hrnet_w18_hiri", False, model_cfg=cfg_cls["hrnet_w18"],
                                kwargs_filter=kwargs_filter, **kwargs)
