"""One MLflow run per stage run, that never kills training and survives the store's outages.

The store is MLflow's local SQLite file at the repo root (`sqlite:///<repo>/mlflow.db`, so
`mlflow ui` started there shows the runs) unless MLFLOW_TRACKING_URI names another. Every call
goes through `_submit`: a failure (server down, database locked) prints one warning, and from then
on the calls are kept, in order, and sent when the store answers again. Reconnection is tried at
the next call once a back-off has passed (30 s, doubling to 10 min, so that a dead server costs a
multi-day run next to nothing), and once more when the run finishes; what still could not be sent
then is named in a second warning. The stage's metrics json is written regardless. HTTP stores
are asked to fail fast (no retry storm inside one call) unless the user set MLflow's retry
variables themselves.
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


def run_id_writer(path: Path):
    """An `on_open` for Tracker: keep the run's id in `path`, so that a resumed stage reopens it."""

    def write(run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id)

    return write


class Tracker:
    RETRY_S = (30.0, 600.0)  # first wait before reconnecting, and the cap of its doubling
    MAX_PENDING = 10_000  # calls kept while the store is away; the oldest go beyond that

    def __init__(self, experiment: str, run_name: str, tags: dict[str, str], uri: str | None = None,
                 run_id: str | None = None, warn=None, note=None, on_open=None, clock=None):
        import time

        self.experiment = experiment
        self.run_name = run_name
        self.tags = tags
        self.uri = uri or tracking_uri()
        self.run_id = run_id
        self.experiment_id: str | None = None
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._note = note or (lambda msg: print(msg, flush=True))  # where the finished run's link goes
        self._on_open = on_open  # called with the run id whenever the run opens (also after an outage)
        self._clock = clock or time.monotonic
        self._client = None
        self._opened = False
        self._pending: list[tuple[str, object]] = []  # (what, call) owed to the store, oldest first
        self._dropped = 0
        self._down = False
        self._wait = self.RETRY_S[0]
        self._next_try = 0.0

    @property
    def online(self) -> bool:
        return self._opened and not self._down

    def _submit(self, what: str, call) -> None:
        """Run `call()` now, or keep it for when the store answers again (in order)."""
        if self.online and not self._pending:
            try:
                call()
                return
            except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
                self._went_down(what, err)
        self._pending.append((what, call))
        if len(self._pending) > self.MAX_PENDING:
            self._pending.pop(0)
            self._dropped += 1
        self._reconnect()

    def _went_down(self, what: str, err: Exception) -> None:
        self._down = True
        self._wait = self.RETRY_S[0]
        self._next_try = self._clock() + self._wait
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        self._warn(f"WARNING: MLflow tracking at {self.uri} failed ({what}: {first}); training continues, "
                   f"metrics are still written to metrics/*.json, and the calls are kept to send when it answers "
                   f"(next try in {self._wait:.0f} s)")

    def _reconnect(self, force: bool = False) -> bool:
        """Open the run if that is still owed, then send what is pending; back off on failure."""
        if not force and self._clock() < self._next_try:
            return False
        sent = 0
        try:
            if not self._opened:
                self._open()
            while self._pending:
                self._pending[0][1]()
                self._pending.pop(0)
                sent += 1
        except Exception:  # noqa: BLE001 - still away: try again later
            self._down = True
            self._next_try = self._clock() + self._wait
            self._wait = min(2 * self._wait, self.RETRY_S[1])
            return False
        if self._down:
            self._note(f"MLflow tracking at {self.uri} answers again: {sent} kept call(s) sent"
                       + (f", {self._dropped} older one(s) dropped" if self._dropped else ""))
        self._down = False
        return True

    def _open(self) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        reopened = False
        if self.run_id is not None:
            try:
                old = self._client.get_run(self.run_id)
                self._client.update_run(self.run_id, status="RUNNING")
                self.experiment_id = old.info.experiment_id
                reopened = True
            except Exception as err:  # noqa: BLE001 - the old run is gone (a store reachable but without it)
                if _unreachable(err):
                    raise
                self.run_id = None
        if not reopened:
            exp_id = model_training_experiment(self._client, self.experiment)
            self.experiment_id = exp_id
            self.run_id = self._client.create_run(exp_id, run_name=self.run_name, tags=self.tags).info.run_id
        self._opened = True
        if self._on_open is not None:
            self._on_open(self.run_id)

    def start(self) -> str | None:
        """Open (or, with run_id, reopen) the run; returns its id, or None while the store is away
        (the run is then opened when it answers, and `on_open` told)."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            self._open()
            return self.run_id
        except Exception as err:  # noqa: BLE001
            self._went_down("opening the run", err)
            return None

    @property
    def where_to_look(self) -> str | None:
        """How to open the experiment's runs in the UI (None while the run is not open)."""
        if not self.online or self.experiment_id is None:
            return None
        return where_to_look(self.experiment_id, self.uri)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's log_batch limit
            chunk = items[i:i + 100]
            self._submit("logging params", lambda chunk=chunk: self._client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)  # when measured, not when sent
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v == v]  # drop NaN
        if items:
            self._submit("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._submit(f"logging artifact {path}",
                     lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        self._submit("closing the run", lambda: self._client.set_terminated(self.run_id, status))
        if self._pending:
            self._reconnect(force=True)  # the last chance: nothing runs after this
        if self._pending or self._dropped:
            self._warn(f"WARNING: MLflow at {self.uri} still did not answer when the run ended: "
                       f"{len(self._pending) + self._dropped} tracking call(s) not logged; the metrics are in "
                       f"metrics/*.json")
            return
        if status == "FINISHED" and self.where_to_look:
            self._note(f"MLflow: run {self.run_name} in experiment {self.experiment}: {self.where_to_look}")


def _unreachable(err: Exception) -> bool:
    """Whether an MLflow error means the store did not answer (rather than that it lacks the run)."""
    from mlflow.exceptions import MlflowException

    return not (isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST")
