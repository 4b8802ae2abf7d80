"""Our side of the comparison: whichever metrics/<stage>.json files exist, and the profile that
produced each (dvc.lock records the params a stage ran with; params.yaml when it has no entry)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

# Stage kinds whose metrics the paper's tables cover; other metrics files (data stages) are not ours
# to compare and do not trigger the report.
COMPARED_PREFIXES = ("train_", "finetune_", "coco_", "ade20k_", "ablation_")


@dataclass(frozen=True)
class OurRun:
    stage: str
    metrics: dict[str, float | None]
    profile: str  # builtin | paper | unknown
    path: Path


def compared_metric_files(metrics_dir: Path) -> list[Path]:
    return sorted(p for p in Path(metrics_dir).glob("*.json") if p.stem.startswith(COMPARED_PREFIXES))


def metrics_index(metrics_dir: Path) -> dict[str, str]:
    """{file name: sha256} of the compared metrics files: what the report stage depends on."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in compared_metric_files(metrics_dir)}


def stage_profiles(repo_root: Path) -> dict[str, str]:
    """profile per stage as recorded in dvc.lock."""
    lock = Path(repo_root) / "dvc.lock"
    if not lock.is_file():
        return {}
    doc = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for name, stage in (doc.get("stages") or {}).items():
        prof = ((stage.get("params") or {}).get("params.yaml") or {}).get("profile")
        if prof:
            out[name] = prof
    return out


def load_our_runs(metrics_dir: Path, repo_root: Path, default_profile: str) -> dict[str, OurRun]:
    profiles = stage_profiles(repo_root)
    runs = {}
    for p in compared_metric_files(metrics_dir):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: not valid JSON ({err}); rerun its stage") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a JSON object of metrics, got {type(data).__name__}")
        metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
                   for k, v in data.items()}
        runs[p.stem] = OurRun(p.stem, metrics, profiles.get(p.stem, default_profile), p)
    return runs
