"""The ablation rows as training runs, short of training one (the DVC end-to-end test in
test_dvc_train.py trains a Table 8 row): the run a stage builds from params.yaml, its recipe and
experiment, and the Table 9 path of a timm backbone without a dense head (EMA distillation off)."""
import math

import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.tracking.paper_tables import PaperDataError
from pipeline.train.ema_distill import EmaTeacher
from pipeline.train.run import build_model, final_metrics
from pipeline.train.stage import make_spec
from pipeline.train.synthetic import SyntheticData
from stages import ablation as ablation_stage

PARAMS = load_params()


def test_an_ablation_run_is_a_pretraining_run_with_its_distillation_switch(tmp_path):
    base = PARAMS.train.recipe(PARAMS.profile)
    t8 = make_spec(PARAMS, "ablation", "t8_hr_hr_t_t_t", repo_root=tmp_path)
    assert t8.stage == "ablation_t8_hr_hr_t_t_t" and t8.experiment == "table8-blocks"
    assert t8.recipe == base  # distils, as the main runs
    assert t8.metrics_file == tmp_path / "metrics" / "ablation_t8_hr_hr_t_t_t.json"
    t9 = make_spec(PARAMS, "ablation", "t9_pvt_v2_b2", repo_root=tmp_path)
    assert t9.experiment == "table9-other-backbones" and t9.run_name == "pvt_v2_b2@224"
    assert t9.recipe.ema.alpha == 1.0 and not t9.recipe.ema.alpha_ramp
    assert t9.recipe.model_copy(update={"ema": base.ema}) == base  # nothing else differs
    assert make_spec(PARAMS, "ablation", "t7_r10_hr_block", repo_root=tmp_path).experiment == "table7-ablation"
    assert make_spec(PARAMS, "train", "hiri_s_448", repo_root=tmp_path).model_factory is None


def test_a_run_without_its_paper_row_or_stage_fails_before_launching(tmp_path):
    with pytest.raises(KeyError, match="no ablation run 't8_nope'"):
        make_spec(PARAMS, "ablation", "t8_nope", repo_root=tmp_path)
    runs = dict(PARAMS.ablation.runs, t8_extra=PARAMS.ablation.runs["t8_hr_hr_t_t_t"])
    params = PARAMS.model_copy(update={"ablation": PARAMS.ablation.model_copy(update={"runs": runs})})
    with pytest.raises(PaperDataError, match="0 paper rows name stage 'ablation_t8_extra'"):
        make_spec(params, "ablation", "t8_extra", repo_root=tmp_path)


def test_the_stage_command_refuses_an_unknown_model(tmp_path, capsys):
    raw = yaml.safe_load(open("params.yaml"))
    raw["ablation"]["runs"]["t9_pvt_v2_b2"]["model"] = "pvt_v3_b2"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert ablation_stage.main(["t9_pvt_v2_b2", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "ablation.runs.t9_pvt_v2_b2.model: no model 'pvt_v3_b2'" in capsys.readouterr().err


def test_models_build_through_the_runs_factory(tmp_path):
    for key, cls in (("t9_hrnet_w18", "HighResolutionNet"), ("t7_r01_mvit", "StagedNet")):
        model = build_model(make_spec(PARAMS, "ablation", key, repo_root=tmp_path), num_classes=4)
        assert type(model).__name__ == cls and model.num_classes == 4, key


@pytest.mark.slow  # fvcore traces the model for GFLOPs: about 20 s
def test_a_backbone_without_a_dense_head_trains_without_distillation_and_reports_no_teacher_map():
    torch.manual_seed(0)
    student = build_model(make_spec(PARAMS, "ablation", "t9_pvt_v2_b2"), num_classes=4)
    with pytest.raises(TypeError, match=r"has no forward_dense\(\); EMA distillation \(alpha 0.8 < 1\)"):
        EmaTeacher(student, decay=0.9, warmup=False, alpha=0.8)
    teacher = EmaTeacher(student, decay=0.9, warmup=False, alpha=1.0)
    recipe = PARAMS.train.builtin.model_copy(update={"eval_batch_size": 8, "throughput_batch": 2,
                                                     "throughput_iters": 1})
    metrics = final_metrics(student, teacher.module, SyntheticData(64, n_train=8, n_val=8), recipe, 64,
                            torch.device("cpu"), "fp32", lambda _: None)
    assert math.isnan(metrics["ema_map_top1"]) and math.isnan(metrics["ema_map_agreement"])
    assert 0 <= metrics["top1"] <= 100 and 0 <= metrics["ema_top1"] <= 100
    assert abs(metrics["params_m"] - (25.362856 - 996 * 513 / 1e6)) < 1e-6  # timm's pvt_v2_b2, 4-class head
