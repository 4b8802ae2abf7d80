"""The paper's rows as MLflow runs, beside ours, under the same metric keys.

Each row of pipeline/tracking/paper/table*.yaml becomes one run tagged `source=paper` in its
table's experiment (table2-imagenet, ...), where our training stages log theirs, so `mlflow ui`
compares them column by column. Idempotent: a run is found again by its `paper_row_id` tag and
updated in place; a run whose metrics/params would have to shrink or change (MLflow cannot delete
a metric or rewrite a param) is replaced, duplicates of one row id are removed, and runs of rows
that no longer exist in the data are deleted. A second call with unchanged data writes nothing.

The store is the one our runs use (mlflow_run.tracking_uri: `sqlite:///<repo>/mlflow.db` unless
MLFLOW_TRACKING_URI). As in mlflow_run, an unreachable store is one warning, not a crash: the
stage's summary says the runs were not logged.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from .mlflow_run import model_training_experiment, tracking_uri
from .paper_tables import PaperRow, all_rows

SOURCE_TAG = "source"
ROW_TAG = "paper_row_id"


@dataclass
class SyncResult:
    uri: str
    logged: bool = True
    error: str | None = None
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    experiments: dict[str, int] = field(default_factory=dict)  # experiment -> paper runs in it

    def summary(self) -> dict:
        return {"logged": self.logged, "error": self.error, "tracking_uri": self.uri,
                "experiments": dict(sorted(self.experiments.items())),
                "paper_runs": sum(self.experiments.values())}


def row_params(row: PaperRow) -> dict[str, str]:
    """Params named like our training runs' (`run.img_size`), so the UI lines them up."""
    params = {}
    if row.res:
        params["run.img_size"] = str(row.res)
    return params


def row_tags(row: PaperRow) -> dict[str, str]:
    tags = {SOURCE_TAG: "paper", ROW_TAG: row.row_id, "paper_table": str(row.table), "paper_source": row.source,
            "network": row.network}
    for key in ("group", "detector", "method"):
        if getattr(row, key):
            tags[key] = getattr(row, key)
    if row.stage:
        tags["reproduced_by_stage"] = row.stage
    if row.unreadable:
        tags["paper_unreadable"] = ",".join(row.unreadable)
    if row.reconstructed:
        tags["paper_reconstructed"] = json.dumps(row.reconstructed)[:4900]
    note = [f"Paper value, {row.source}."]
    if row.unreadable:
        note.append(f"Cells lost in the text extraction (not logged): {', '.join(row.unreadable)}.")
    for k, why in row.reconstructed.items():
        note.append(f"{k} reconstructed: {why}.")
    tags["mlflow.note.content"] = " ".join(note)
    return tags


def row_metrics(row: PaperRow) -> dict[str, float]:
    return {k: v for k, v in row.values.items() if v is not None}


def sync_paper_runs(rows: list[PaperRow], uri: str | None = None, warn=None) -> SyncResult:
    """Make the store's paper runs match `rows` (the complete paper data): one run per row,
    created or updated; paper runs of rows not given are deleted. See the module docstring."""
    def sync(client, result):
        by_exp = _by_experiment(rows)
        for name, exp_rows in by_exp.items():
            _sync_experiment(client, name, exp_rows, result)
            result.experiments[name] = len(exp_rows)
        for exp in client.search_experiments():  # a table dropped from the data: its paper runs go too
            if exp.name not in by_exp:
                _sync_experiment(client, exp.name, [], result, create=False)

    return _with_store(sync, uri, warn, "the paper's reference runs were not logged. Fix the store, then "
                       "`dvc repro -f paper_reference`")


def sync_stage_rows(stage: str, experiment: str, uri: str | None = None, warn=None) -> SyncResult:
    """Log the paper row(s) of `experiment` that DVC stage `stage` reproduces (Table 2's
    HIRI-ViT-S@448 row for train_hiri_s_448 in table2-imagenet) beside the stage's own run, the
    same way `sync_paper_runs` does; the experiment's other paper runs are left as they are. A
    training stage calls this when it opens its run, so `mlflow ui` compares it to the paper after
    the stage alone; `dvc repro paper_reference` logs the rest of the tables (the ablation tables'
    rows for the same stage included)."""
    rows = [r for r in all_rows() if r.stage == stage and r.experiment == experiment]

    def sync(client, result):
        for name, exp_rows in _by_experiment(rows).items():
            _sync_experiment(client, name, exp_rows, result, prune=False)
            result.experiments[name] = len(exp_rows)

    return _with_store(sync, uri, warn, f"the paper's row for {stage} was not logged")


def _by_experiment(rows: list[PaperRow]) -> dict[str, list[PaperRow]]:
    by_exp: dict[str, list[PaperRow]] = defaultdict(list)
    for r in rows:
        by_exp[r.experiment].append(r)
    return by_exp


def _with_store(sync, uri: str | None, warn, consequence: str) -> SyncResult:
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = SyncResult(uri=uri or tracking_uri())
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast on a dead server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        from mlflow import MlflowClient

        sync(MlflowClient(tracking_uri=result.uri), result)
    except Exception as err:  # noqa: BLE001 - a tracking failure is reported, not fatal (as mlflow_run)
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        result.logged, result.error = False, first
        warn(f"WARNING: MLflow tracking at {result.uri} failed ({first}); {consequence}.")
    return result


def _sync_experiment(client, name: str, rows: list[PaperRow], result: SyncResult, create: bool = True,
                     prune: bool = True) -> None:
    """Rows to runs in experiment `name`. prune: also delete the paper runs of rows not given
    (with prune=False only duplicates of the given rows go)."""
    from mlflow.entities import Metric, Param, RunTag

    exp = client.get_experiment_by_name(name)
    if exp is None and not create:
        return
    exp_id = model_training_experiment(client, name)
    existing = defaultdict(list)
    token = None
    while True:  # page through every paper run of the experiment
        page = client.search_runs([exp_id], filter_string=f"tags.{SOURCE_TAG} = 'paper'", max_results=1000,
                                  page_token=token)
        for run in page:
            existing[run.data.tags.get(ROW_TAG)].append(run)
        token = page.token
        if not token:
            break
    wanted = {r.row_id for r in rows}
    for row_id, runs in existing.items():  # rows gone from the data, and duplicates of one row
        if row_id not in wanted and not prune:
            continue
        for run in (runs if row_id not in wanted else runs[1:]):
            client.delete_run(run.info.run_id)
            result.deleted += 1
    ts = int(time.time() * 1000)
    for row in rows:
        metrics, params, tags = row_metrics(row), row_params(row), row_tags(row)
        run = existing.get(row.row_id, [None])[0]
        if run is not None:
            have_m, have_p, have_t = run.data.metrics, run.data.params, run.data.tags
            same_tags = all(have_t.get(k) == v for k, v in tags.items())
            if have_m == metrics and have_p == params and same_tags and run.info.status == "FINISHED":
                result.unchanged += 1
                continue
            if set(have_m) - set(metrics) or any(have_p.get(k, v) != v for k, v in params.items()) \
                    or set(have_p) - set(params):
                client.delete_run(run.info.run_id)  # MLflow cannot drop a metric or change a param
                result.deleted += 1
                run = None
        if run is None:
            run_id = client.create_run(exp_id, run_name=f"paper · {row.label}", tags=tags).info.run_id
            result.created += 1
        else:
            run_id = run.info.run_id
            result.updated += 1
        client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in sorted(metrics.items())],
                         params=[Param(k, v) for k, v in sorted(params.items()) if k not in
                                 (run.data.params if run is not None else {})],
                         tags=[RunTag(k, v) for k, v in sorted(tags.items())])
        client.set_terminated(run_id, "FINISHED")
