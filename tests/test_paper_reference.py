"""Paper rows as MLflow runs: created once, updated in place, never duplicated."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.tracking import paper_tables as pt
from pipeline.tracking.reference import sync_paper_runs


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def paper_runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.source = 'paper'", max_results=1000)


def small_rows():
    """Tables 8 and 9 (10 rows) plus the HIRI-ViT-S 448 row of Table 2: fast, and all three kinds."""
    rows = [r for r in pt.all_rows() if r.table in (8, 9)]
    return rows + [r for r in pt.all_rows() if r.row_id == "table2/hiri-vit-s@448"]


def test_second_sync_creates_no_duplicates_and_changes_nothing(store):
    rows = small_rows()
    first = sync_paper_runs(rows)
    assert first.logged and first.created == len(rows) == 11
    second = sync_paper_runs(rows)
    assert (second.created, second.updated, second.deleted, second.unchanged) == (0, 0, 0, 11)
    runs = paper_runs(store, "table2-imagenet")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics == {"params_m": 34.8, "gflops": 5.0, "throughput": 1490.0, "top1": 84.3, "top5": 97.0,
                                "v2_top1": 74.0}
    assert run.data.tags["paper_row_id"] == "table2/hiri-vit-s@448"
    assert run.data.tags["reproduced_by_stage"] == "train_hiri_s_448"
    assert run.data.params == {"run.img_size": "448"}
    assert len(paper_runs(store, "table9-other-backbones")) == 6


def test_changed_value_updates_in_place_and_removed_metric_replaces_the_run(store):
    rows = small_rows()
    sync_paper_runs(rows)
    target = rows[-1]
    before = paper_runs(store, "table2-imagenet")[0].info.run_id
    changed = dataclasses.replace(target, values={**target.values, "top1": 84.4})
    result = sync_paper_runs(rows[:-1] + [changed])
    assert (result.updated, result.created, result.deleted) == (1, 0, 0)
    runs = paper_runs(store, "table2-imagenet")
    assert [r.info.run_id for r in runs] == [before] and runs[0].data.metrics["top1"] == 84.4

    dropped = dataclasses.replace(target, values={**target.values, "v2_top1": None}, unreadable=("v2_top1",))
    result = sync_paper_runs(rows[:-1] + [dropped])
    runs = paper_runs(store, "table2-imagenet")
    assert len(runs) == 1 and "v2_top1" not in runs[0].data.metrics and result.deleted == 1


def test_rows_removed_from_the_data_lose_their_runs(store):
    rows = small_rows()
    sync_paper_runs(rows)
    result = sync_paper_runs([r for r in rows if r.table != 9])
    assert result.deleted == 6
    assert paper_runs(store, "table9-other-backbones") == []


def test_unreachable_store_is_one_warning_not_a_crash():
    warnings = []
    result = sync_paper_runs(small_rows()[:1], uri="http://127.0.0.1:9", warn=warnings.append)
    assert not result.logged and len(warnings) == 1 and "127.0.0.1:9" in warnings[0]
    assert result.summary()["logged"] is False
