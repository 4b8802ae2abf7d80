"""Which model, at which resolution, reproduces each row of Tables 7, 8 and 9, and how a stage
builds it.

Keyed by (table, 1-based row) as in pipeline/tracking/paper/table{7,8,9}.yaml. Rows that are the
same architecture share a model rather than copying it: Table 7 row 7 is row 6's model at 448,
rows 10 and 11 are HIRI-ViT-S (row 11 adds EMA distillation, a training change), and Table 8
row 4 is HIRI-ViT-S.
"""
from __future__ import annotations

from typing import NamedTuple

import timm
from torch import nn


class RowModel(NamedTuple):
    model: str
    img_size: int


ROWS: dict[tuple[int, int], RowModel] = {
    (7, 1): RowModel("hiri_ablation_t7_r01_mvit", 224),
    (7, 2): RowModel("hiri_ablation_t7_r02_cffn", 224),
    (7, 3): RowModel("hiri_ablation_t7_r03_no_mha", 224),
    (7, 4): RowModel("hiri_ablation_t7_r04_bn", 224),
    (7, 5): RowModel("hiri_ablation_t7_r05_conv_stem", 224),
    (7, 6): RowModel("hiri_ablation_t7_r06_irds", 224),
    (7, 7): RowModel("hiri_ablation_t7_r06_irds", 448),
    (7, 8): RowModel("hiri_ablation_t7_r08_five_stages", 448),
    (7, 9): RowModel("hiri_ablation_t7_r09_hr_stem", 448),
    (7, 10): RowModel("hiri_vit_s", 448),
    (7, 11): RowModel("hiri_vit_s", 448),
    (8, 1): RowModel("hiri_vit_s_blocks_hr_hr_hr_hr_t", 448),
    (8, 2): RowModel("hiri_vit_s_blocks_hr_hr_hr_t_t", 448),
    (8, 3): RowModel("hiri_vit_s_blocks_hr_hr_t_t_t", 448),
    (8, 4): RowModel("hiri_vit_s", 448),
    (9, 1): RowModel("hrnet_w18", 224),
    (9, 2): RowModel("hrnet_w18_hiri", 448),
    (9, 3): RowModel("pvt_v2_b2", 224),
    (9, 4): RowModel("pvt_v2_b2_hiri", 448),
    (9, 5): RowModel("davit_tiny", 224),
    (9, 6): RowModel("davit_tiny_hiri", 448),
}

TIMM_BASELINES = ("hrnet_w18", "pvt_v2_b2", "davit_tiny")
# Table 9's models are timm's classes (ours subclass them): they take no img_size, and run at any
# input whose side their total stride divides (no position embedding fixes a grid).
TABLE9_MODELS = TIMM_BASELINES + ("hrnet_w18_hiri", "pvt_v2_b2_hiri", "davit_tiny_hiri")


def create_row_model(model: str, img_size: int, num_classes: int = 1000,
                     drop_path_rate: float | None = None) -> nn.Module:
    """A row's model as its stage trains it: timm.create_model with the keywords the model takes.
    drop_path_rate None = not passed (HRNet has no stochastic depth: timm refuses the keyword)."""
    if not timm.is_model(model):
        raise ValueError(f"no timm model {model!r}; the ablation rows' models: "
                         f"{sorted({r.model for r in ROWS.values()})}")
    kwargs = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    if model not in TABLE9_MODELS:
        kwargs["img_size"] = img_size
    return timm.create_model(model, num_classes=num_classes, **kwargs)
