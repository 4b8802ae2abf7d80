"""Shared bits of the data stages' entry points: params loading, clear errors, metrics, MLflow."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from pipeline.config import ParamsError


def data_errors() -> tuple[type[Exception], ...]:
    from pipeline.data.manifest import ManifestError
    from pipeline.data.scan import DataLayoutError
    from pipeline.data.sources import SourceError

    return (ParamsError, SourceError, DataLayoutError, ManifestError)


def run_cli(body: Callable[[], int]) -> int:
    """Run a stage body; the data errors become one `error:` line and exit status 2."""
    try:
        return body()
    except data_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def write_metrics(path: str | None, metrics: dict) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=1) + "\n")
    os.replace(tmp, p)


def log_mlflow(stage: str, params: dict, metrics: dict) -> None:
    """One MLflow run for the stage (pipeline.tracking never raises; it warns and goes on)."""
    from pipeline.tracking.mlflow_run import Tracker, flatten

    tracker = Tracker(experiment="data", run_name=stage, tags={"stage": stage})
    tracker.start()
    tracker.log_params(flatten(params))
    tracker.log_metrics({k: float(v) for k, v in flatten(metrics).items() if _is_number(v)})
    tracker.finish()


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
