"""DVC end to end in a temporary copy of the repo: `dvc repro report` needs no training stage,
reruns only when a compared metrics file or the paper data changes, and never duplicates the
paper's MLflow runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import copy_repo, repo_env, run

pytestmark = pytest.mark.dvc


@pytest.fixture()
def repo_copy(tmp_path):
    def quick_fig1(params):
        params["report"]["fig1"].update(hiri_resolutions=[224], swin_resolutions=[224], warmup=0, repeats=1)

    dst = copy_repo(tmp_path / "repo", quick_fig1, skip=("metrics/", "reports/", "plots/"))
    (dst / "metrics").mkdir(exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return dst, repo_env(MLFLOW_TRACKING_URI=uri), uri


def paper_run_count(uri: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, filter_string="tags.source = 'paper'", max_results=1000))


def test_report_reruns_only_on_metrics_or_paper_data(repo_copy):
    repo, env, uri = repo_copy
    dvc = [str(Path(sys.executable).parent / "dvc"), "repro", "report"]
    n_rows = sum(len(yaml.safe_load(p.read_text())["rows"]) for p in (repo / "pipeline/tracking/paper").glob("table*.yaml"))
    metrics = repo / "metrics/train_hiri_s_448.json"  # as if `dvc repro train_hiri_s_448` had run
    metrics.write_text(json.dumps({"top1": 40.0, "top5": 90.0, "v2_top1": 35.0, "params_m": 34.8, "gflops": 5.0,
                                   "throughput": 10.0}))

    out = run(dvc, repo, env)
    assert "Running stage 'paper_reference'" in out and "Running stage 'report'" in out
    assert "Running stage 'train_" not in out and "Running stage 'prepare_data'" not in out
    md = (repo / "reports/paper_vs_ours.md").read_text()
    assert "| HIRI-ViT-S @448 | `train_hiri_s_448` | Top-1 (%) | 84.3 | 40.0 | -44.30 |" in md
    assert "not run" in md and (repo / "reports/figures/fig1_cost_vs_resolution.png").is_file()
    assert paper_run_count(uri) == n_rows

    out = run(dvc, repo, env)  # nothing changed
    assert "Running stage 'report'" not in out and "Running stage 'paper_reference'" not in out

    (repo / "metrics/prepare_data.json").write_text("{}")  # a metrics file the report does not compare
    out = run(dvc, repo, env)
    assert "Running stage 'report'" not in out

    metrics.write_text(metrics.read_text().replace("40.0", "41.0"))
    out = run(dvc, repo, env)
    assert "Running stage 'report'" in out and "Running stage 'paper_reference'" not in out
    assert "| 84.3 | 41.0 |" in (repo / "reports/paper_vs_ours.md").read_text()

    t9 = repo / "pipeline/tracking/paper/table9.yaml"
    t9.write_text(t9.read_text().replace("top1: 80.5", "top1: 80.6"))
    out = run(dvc, repo, env)
    assert "Running stage 'paper_reference'" in out and "Running stage 'report'" in out
    assert paper_run_count(uri) == n_rows  # updated in place, no duplicates
