"""One MLflow run per stage run, that never kills training.

The store is MLflow's local SQLite file at the repo root (`sqlite:///<repo>/mlflow.db`, so
`mlflow ui` started there shows the runs) unless MLFLOW_TRACKING_URI names another. Every call
goes through `_safe`: the first failure (server down, database locked, bad URI) prints one clear
warning and switches tracking off for the rest of the run; the stage's metrics json is written
regardless. HTTP stores are asked to fail fast (no retry storm) unless the user set MLflow's
retry variables themselves.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# MLflow 3.x opens an experiment in its GenAI (traces) view unless told otherwise. The UI reads the
# experiment tag `mlflow.experimentKind` (values in its ExperimentKind enum; "custom_model_development"
# is what its "Model training" choice writes) and, where its workflow switch is on (3.17), the URL
# parameter `workflowType=machine_learning`. We set the tag on every experiment we write to and
# print links that carry the parameter.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
UI_ADDRESS = "http://127.0.0.1:5000"  # where a plain `mlflow ui` serves


def tracking_uri(repo_root: str | Path = REPO_ROOT) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(repo_root).resolve() / 'mlflow.db'}"


def git_commit(repo_root: str | Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_training_experiment(client, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as a model-training experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if exp.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # made by an older version of this code
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


def runs_url(experiment_id: str, uri: str | None = None) -> str:
    """The UI page listing the experiment's runs: on the tracking server itself when the store is
    one, else where `mlflow ui` serves by default (a local file store)."""
    uri = uri or tracking_uri()
    base = uri.rstrip("/") if _is_server(uri) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def where_to_look(experiment_id: str, uri: str | None = None) -> str:
    """How a user opens the experiment's runs: the link, after the `mlflow ui` command that serves
    a local store (`mlflow ui` reads ./mlflow.db by default)."""
    uri = uri or tracking_uri()
    link = runs_url(experiment_id, uri)
    if _is_server(uri):
        return f"open {link}"
    db = uri.removeprefix("sqlite:///")
    serve = f"`mlflow ui` in {Path(db).parent}" if uri.startswith("sqlite:///") and db.endswith("/mlflow.db") \
        else f"`mlflow ui --backend-store-uri {uri}`"
    return f"{serve}, then open {link}"


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


class Tracker:
    def __init__(self, experiment: str, run_name: str, tags: dict[str, str], uri: str | None = None,
                 run_id: str | None = None, warn=None, note=None):
        self.experiment = experiment
        self.run_name = run_name
        self.tags = tags
        self.uri = uri or tracking_uri()
        self.run_id = run_id
        self.experiment_id: str | None = None
        self.enabled = True
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._note = note or (lambda msg: print(msg, flush=True))  # where the finished run's link goes
        self._client = None

    def _safe(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            self.enabled = False
            first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            self._warn(f"WARNING: MLflow tracking at {self.uri} failed ({what}: {first}); "
                       f"training continues without tracking, metrics are still written to metrics/*.json")
            return None

    def start(self) -> str | None:
        """Open (or, with run_id, reopen) the run; returns its id, or None if tracking is off."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

        def _open():
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
            if self.run_id is not None:
                try:
                    old = self._client.get_run(self.run_id)
                    self._client.update_run(self.run_id, status="RUNNING")
                    self.experiment_id = old.info.experiment_id
                    return self.run_id
                except Exception:  # noqa: BLE001 - the old run is gone: open a new one
                    self.run_id = None
            exp_id = model_training_experiment(self._client, self.experiment)
            self.experiment_id = exp_id
            run = self._client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
            return self.run_id

        return self._safe("opening the run", _open)

    @property
    def where_to_look(self) -> str | None:
        """How to open the experiment's runs in the UI (None while tracking is off)."""
        if not self.enabled or self.experiment_id is None:
            return None
        return where_to_look(self.experiment_id, self.uri)

    def log_params(self, params: dict[str, str]) -> None:
        if not self.enabled or self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's log_batch limit
            self._safe("logging params", self._client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled or self._client is None:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v == v]  # drop NaN
        if items:
            self._safe("logging metrics", self._client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.enabled or self._client is None:
            return
        self._safe(f"logging artifact {path}", self._client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.enabled or self._client is None:
            return
        self._safe("closing the run", self._client.set_terminated, self.run_id, status)
        if status == "FINISHED" and self.where_to_look:
            self._note(f"MLflow: run {self.run_name} in experiment {self.experiment}: {self.where_to_look}")
