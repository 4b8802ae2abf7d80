"""The report: paper value, ours, difference per HIRI-ViT row; `not run` elsewhere; the header's
profile; the metrics index that decides when DVC reruns it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.report.compare import LABELS
from pipeline.report.ours import load_our_runs, metrics_index
from pipeline.tracking import paper_tables as pt
from stages import report as report_stage

REPO = Path(__file__).resolve().parent.parent
OURS = {"top1": 61.5, "top5": 95.0, "v2_top1": 55.0, "ema_top1": 60.0, "ema_top5": 94.0, "ema_v2_top1": None,
        "params_m": 34.81, "gflops": 5.02, "throughput": 12.3}


@pytest.fixture()
def workdir(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "train_hiri_s_448.json").write_text(json.dumps(OURS))
    (metrics / "prepare_data.json").write_text(json.dumps({"seconds": 1.0}))  # not a compared stage
    return tmp_path


def build(workdir: Path, params: Path = REPO / "params.yaml"):
    return report_stage.build(workdir, workdir / "reports", workdir / "metrics", params, measure=False)


def test_report_lists_every_hiri_row_with_ours_or_not_run(workdir):
    build(workdir)
    md = (workdir / "reports/paper_vs_ours.md").read_text()
    html = (workdir / "reports/paper_vs_ours.html").read_text()
    assert "| HIRI-ViT-S @448 | `train_hiri_s_448` | Top-1 (%) | 84.3 | 61.5 | -22.80 |" in md
    assert "| HIRI-ViT-S @448 | `train_hiri_s_448` | Params (M) | 34.8 | 34.8 | +0.01 |" in md
    assert "| HIRI-ViT-B @448 | `train_hiri_b_448` | Top-1 (%) | 85.2 | not run |  |" in md
    # every HIRI-ViT row of Tables 2-6 appears, with each of its metrics
    for r in pt.all_rows():
        if r.is_hiri and r.table <= 6:
            for m in r.values:
                assert f"| {r.label} | `{r.stage}` | {LABELS[m]} |" in md, (r.row_id, m)
    assert "unreadable" in md  # Table 4's lost cells are said to be lost, not left blank
    assert "pipeline check, not a reproduction" in md and "<strong>This is a pipeline check" in html
    assert "<td class='n'>84.3</td><td class='n'>61.5</td>" in html
    assert (workdir / "reports/figures/fig6_top1_vs_cost.png").stat().st_size > 10_000
    assert "not run" in html


def test_profile_comes_from_dvc_lock_when_recorded(workdir):
    lock = {"schema": "2.0", "stages": {"train_hiri_s_448": {"params": {"params.yaml": {"profile": "paper"}}}}}
    (workdir / "dvc.lock").write_text(yaml.safe_dump(lock))
    build(workdir)
    md = (workdir / "reports/paper_vs_ours.md").read_text()
    assert "produced with the paper's scale" in md and "pipeline check" not in md


def test_no_runs_yet_says_so(tmp_path):
    (tmp_path / "metrics").mkdir()
    build(tmp_path)
    md = (tmp_path / "reports/paper_vs_ours.md").read_text()
    assert "No stage of ours has run yet" in md and "| 61.5 |" not in md


def test_metrics_index_covers_only_compared_stages(workdir):
    index = metrics_index(workdir / "metrics")
    assert list(index) == ["train_hiri_s_448.json"]
    (workdir / "metrics/prepare_data.json").write_text("{}")
    assert metrics_index(workdir / "metrics") == index
    (workdir / "metrics/train_hiri_s_448.json").write_text(json.dumps({**OURS, "top1": 62.0}))
    assert metrics_index(workdir / "metrics") != index


def test_broken_metrics_file_is_named(workdir):
    (workdir / "metrics/train_hiri_b_224.json").write_text("{not json")
    with pytest.raises(ValueError, match="train_hiri_b_224.json: not valid JSON"):
        load_our_runs(workdir / "metrics", workdir, "builtin")


def test_unknown_stage_metrics_are_listed(workdir):
    (workdir / "metrics/train_hiri_x_999.json").write_text(json.dumps(OURS))
    build(workdir)
    assert "`train_hiri_x_999`" in (workdir / "reports/paper_vs_ours.md").read_text()
