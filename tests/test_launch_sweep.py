"""`python -m pipeline.launch --table N` planned without a cluster: a table's stages from the paper
data, and one job per stale row (submission stubbed; tests/test_launch_dag.py submits for real)."""
import pytest

from pipeline.config import load_params
from pipeline.launch import dag
from pipeline.train.stage import make_spec
from tests.repo_copy import REPO

T8 = ["ablation_t8_hr_hr_hr_hr_t", "ablation_t8_hr_hr_hr_t_t", "ablation_t8_hr_hr_t_t_t", "train_hiri_s_448"]


def test_a_tables_stages_are_those_its_rows_name():
    assert dag.table_stages(8) == T8
    assert dag.table_stages(9) == [f"ablation_t9_{m}{h}" for m in ("hrnet_w18", "pvt_v2_b2", "davit_tiny")
                                   for h in ("", "_hiri")]
    t7 = dag.table_stages(7)
    assert len(t7) == 11 and t7[-1] == "train_hiri_s_448" and t7[6] == "ablation_t7_r07_448"
    with pytest.raises(dag.LaunchPlanError, match=r"no Table 1 in the paper data \(tables: \[2, 3,"):
        dag.table_stages(1)


def test_the_sweep_submits_one_job_per_stale_row(monkeypatch):
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"launch": params.launch.model_copy(update={"launcher": "slurm"})})
    monkeypatch.setattr(dag, "load_params", lambda path: params)
    stale = {"ablation_t8_hr_hr_t_t_t", "train_hiri_s_448"}  # the other two rows as if already reproduced
    monkeypatch.setattr(dag, "stale_stages", lambda root, targets: stale)
    monkeypatch.setattr(dag.slurm, "executor_for", lambda spec, folder: None)
    monkeypatch.setattr(dag.slurm, "preflight", lambda spec, echo: None)  # tests/test_launch_plan.py
    submitted = []

    def submit(spec, key, dependency=None, planned=False):
        submitted.append((spec.stage, spec.kind, spec.model_factory, dependency))
        return {"job_id": str(100 + len(submitted)), "attached": False}

    monkeypatch.setattr(dag.slurm, "submit", submit)
    said = []
    dag.launch(dag.table_stages(8), make_spec, REPO, echo=said.append)
    assert submitted == [("ablation_t8_hr_hr_t_t_t", "ablation", "pipeline.models.ablations:create_row_model", None),
                         ("train_hiri_s_448", "train", None, None)]
    assert said == ["ablation_t8_hr_hr_t_t_t: submitted job 101", "train_hiri_s_448: submitted job 102"]


def test_the_command_takes_tables_and_stages(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(dag, "launch", lambda targets, make_spec: asked.append(targets))
    assert dag.main(make_spec, ["train_hiri_s_224", "--table", "8"]) == 0
    assert asked == [["train_hiri_s_224"] + T8]
    assert "then: dvc repro train_hiri_s_224 " + " ".join(T8) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        dag.main(make_spec, [])
