"""Tables 7 and 8 as timm models: one config per row, built by StagedNet, registered by name.

Table 7 (Section 5.4) walks from a four-stage M-ViT to HIRI-ViT-S one change per row; Table 8
(Section 5.5) swaps the block kind of HIRI-ViT-S's stages. Every choice the text leaves open is
argued with the rows' own counts in docs/ablations.md (`python -m pipeline.models.ablation_report`):

- M-ViT's four stages are HIRI-ViT-S's stages 2-5 (widths 64/128/320/512; Section 5.4's row 8
  adds the fifth stage in front, and row 10 is HIRI-ViT-S). Depths 1/2/9/4: row 10 replaces
  "each CFFN with two stacked HR blocks in the first two stages", so rows 8-9 have one CFFN block
  in each of stages 1-2 where HIRI-ViT-S has two HR blocks; stage 3 (M-ViT's stage 2) has
  HIRI-ViT-S's two.
- Stages 3-4 are HIRI-ViT-S's stages 4-5 throughout (E = 5, heads 5 and 8); stages 1-2 have
  heads 1 and 2 (head width 64, as stages 3-4) and PVTv2's spatial-reduction ratios 8 and 4.
- FFN expansion in stages 1-2: 4 in rows 1-2, "enlarged" to 6 when MHA goes (row 3); every
  CFFN-only stage of the later rows keeps 6, which is Table 1's E3 for HIRI-ViT-S's CFFN stage.
- Rows 1-3 normalise with LN (M-ViT); row 4 swaps LN for BN "in the first two stages and each
  CFFN block", after which the blocks are HIRI-ViT's own (blocks.CFFNBlock, TransformerBlock).
"""
from __future__ import annotations

from dataclasses import dataclass

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..hiri_vit import CONFIGS as HIRI_CONFIGS
from ..hiri_vit import checkpoint_filter_fn
from .net import StagedNet, StageSpec


@dataclass(frozen=True)
class Variant:
    stages: tuple[StageSpec, ...]
    downsamples: tuple[str, ...]
    stem: str
    stem_norm: str = "bn"
    img_size: int = 448  # the row's resolution (Table 7: rows 1-6 at 224)


_S = HIRI_CONFIGS["hiri_vit_s"]
STEM_WIDTH = _S.stem_width  # 32: HR-stem and Conv-stem alike
MVIT_DEPTHS = (1, 2, 9, 4)
MVIT_HEADS = (1, 2, _S.heads[0], _S.heads[1])
MVIT_SR = (8, 4)
MVIT_FFN_RATIO = 4.0  # rows 1-2, stages 1-2
CFFN_ONLY_RATIO = float(_S.mlp_ratios[2])  # 6: row 3's enlarged expansion, Table 1's E3


def _mvit(conv_ffn: bool, attention12: bool) -> tuple[StageSpec, ...]:
    """Rows 1-3: M-ViT's pre-norm LN blocks; stages 1-2 reduce keys/values (or drop MHA)."""
    w, e = _S.widths, _S.mlp_ratios
    r12 = MVIT_FFN_RATIO if attention12 else CFFN_ONLY_RATIO
    early = [
        StageSpec("mvit", w[i + 1], MVIT_DEPTHS[i], r12, MVIT_HEADS[i], MVIT_SR[i], attention12, conv_ffn, "ln")
        for i in range(2)
    ]
    late = [StageSpec("mvit", w[i + 1], MVIT_DEPTHS[i], e[i + 1], MVIT_HEADS[i], 1, True, conv_ffn, "ln")
            for i in (2, 3)]
    return tuple(early + late)


# Rows 4 on: HIRI-ViT's blocks (BN in the CFFN stages and in every CFFN, LN before attention).
_W, _E = _S.widths, _S.mlp_ratios
FOUR_STAGES = (
    StageSpec("cffn", _W[1], MVIT_DEPTHS[0], CFFN_ONLY_RATIO),
    StageSpec("cffn", _W[2], MVIT_DEPTHS[1], CFFN_ONLY_RATIO),
    StageSpec("t", _W[3], _S.depths[3], _E[3], _S.heads[0]),
    StageSpec("t", _W[4], _S.depths[4], _E[4], _S.heads[1]),
)
# Row 8's added first stage: one CFFN block at C1 (row 10 turns it into two HR blocks).
FIVE_STAGES = (StageSpec("cffn", _W[0], 1, CFFN_ONLY_RATIO),) + FOUR_STAGES
CONV_DS_LN = ("conv-ln",) * 3
CONV_DS_BN = ("conv-bn",) * 3
# Section 4.3: IRDS-a after the high-resolution stages, IRDS-b for the last two downsamplings.
IRDS_4 = ("irds-a", "irds-b", "irds-b")
IRDS_5 = ("irds-a", "irds-a", "irds-b", "irds-b")


def _hiri_s_stages(kinds: tuple[str, str, str, str, str]) -> tuple[StageSpec, ...]:
    """HIRI-ViT-S's stages (Table 1) with the block kind of each stage given (Table 8).
    A Transformer stage at C3 = 128 takes 2 heads: head width 64, as stages 4-5 (320/5, 512/8)."""
    heads = (1, 1, _W[2] // 64, _S.heads[0], _S.heads[1])
    return tuple(
        StageSpec(k, _W[i], _S.depths[i], _E[i], heads[i] if k == "t" else 0) for i, k in enumerate(kinds)
    )


VARIANTS: dict[str, Variant] = {
    # Table 7 (rows 7, 10 and 11 are models registered elsewhere: row 6 at 448, hiri_vit_s).
    "hiri_ablation_t7_r01_mvit": Variant(_mvit(False, True), CONV_DS_LN, "vit", "ln", 224),
    "hiri_ablation_t7_r02_cffn": Variant(_mvit(True, True), CONV_DS_LN, "vit", "ln", 224),
    "hiri_ablation_t7_r03_no_mha": Variant(_mvit(True, False), CONV_DS_LN, "vit", "ln", 224),
    "hiri_ablation_t7_r04_bn": Variant(FOUR_STAGES, CONV_DS_BN, "vit", "bn", 224),
    "hiri_ablation_t7_r05_conv_stem": Variant(FOUR_STAGES, CONV_DS_BN, "conv", "bn", 224),
    "hiri_ablation_t7_r06_irds": Variant(FOUR_STAGES, IRDS_4, "conv", "bn", 224),
    "hiri_ablation_t7_r08_five_stages": Variant(FIVE_STAGES, IRDS_5, "conv", "bn", 448),
    "hiri_ablation_t7_r09_hr_stem": Variant(FIVE_STAGES, IRDS_5, "hr", "bn", 448),
    # Table 8 (row 4, HR-HR-CFFN-T-T, is hiri_vit_s).
    "hiri_vit_s_blocks_hr_hr_hr_hr_t": Variant(_hiri_s_stages(("hr", "hr", "hr", "hr", "t")), IRDS_5, "hr"),
    "hiri_vit_s_blocks_hr_hr_hr_t_t": Variant(_hiri_s_stages(("hr", "hr", "hr", "t", "t")), IRDS_5, "hr"),
    "hiri_vit_s_blocks_hr_hr_t_t_t": Variant(_hiri_s_stages(("hr", "hr", "t", "t", "t")), IRDS_5, "hr"),
}
# HIRI-ViT-S itself in StagedNet's terms: the check that StagedNet is HiriViT generalised.
HIRI_S_AS_STAGED = Variant(_hiri_s_stages(("hr", "hr", "cffn", "t", "t")), IRDS_5, "hr")


def _cfg(img_size: int) -> dict:
    grid = img_size // 32 if img_size % 64 else img_size // 64
    return dict(
        url="", num_classes=1000, input_size=(3, img_size, img_size), pool_size=(grid, grid), crop_pct=0.875,
        interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="stem", classifier="head",
    )


default_cfgs = generate_default_cfgs(
    {f"{name}.untrained_{v.img_size}": _cfg(v.img_size) for name, v in VARIANTS.items()}
    # Row 7 is row 6's model at 448.
    | {"hiri_ablation_t7_r06_irds.untrained_448": _cfg(448)}
)


def create_variant(name: str, pretrained: bool = False, **kwargs) -> StagedNet:
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; known: {sorted(VARIANTS)}")
    if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        raise ValueError(f"{name}: no published weights exist; load a trained stage's model.pt with "
                         f"pretrained_cfg_overlay=dict(file=...)")
    v = VARIANTS[name]
    img_size = kwargs.setdefault("img_size", v.img_size)
    img_size = int(img_size[0] if isinstance(img_size, (tuple, list)) else img_size)
    n_stages = len(v.stages)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.update(input_size=(3, img_size, img_size))
    return build_model_with_cfg(
        StagedNet, name, pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=tuple(range(n_stages))),
        stages=v.stages, downsamples=v.downsamples, stem=v.stem, stem_width=STEM_WIDTH, stem_norm=v.stem_norm,
        **kwargs,
    )


def _register(name: str) -> None:
    def fn(pretrained: bool = False, **kwargs) -> StagedNet:
        return create_variant(name, pretrained, **kwargs)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"{name}: see pipeline/models/ablations/variants.py and docs/ablations.md."
    globals()[name] = register_model(fn)


for _name in VARIANTS:
    _register(_name)
