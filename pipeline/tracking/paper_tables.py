"""The paper's Tables 2-9 as data: loads and checks pipeline/tracking/paper/table*.yaml.

Each YAML file is one table, rows in the paper's order. A cell is a number, or null: null means
"-" in the paper (not reported) unless the field is listed in the row's `unreadable`, which means
the extracted text lost the cell and we do not guess it. `reconstructed` maps a filled cell to
the text that supports it (or to a key of the file's `defaults`). Loading fails with a message
naming the file, row and field for anything inconsistent, so a typo cannot reach MLflow.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

PAPER_DIR = Path(__file__).resolve().parent / "paper"
# Metric keys of our metrics json (pipeline/train) and the dense-task keys chosen for the paper's
# detection/segmentation columns (docs/report.md explains each).
KNOWN_METRICS = (
    "params_m", "gflops", "throughput", "top1", "top5", "v2_top1",
    "ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box", "ap_mask", "ap50_mask", "ap75_mask",
    "miou",
)
# Row fields that are descriptions, not metrics.
ROW_FIELDS = {"network", "group", "detector", "method", "res", "stages", "stage", "unreadable", "reconstructed", "raw"}
HIRI_SIZES = {"HIRI-ViT-S": "hiri_vit_s", "HIRI-ViT-B": "hiri_vit_b", "HIRI-ViT-L": "hiri_vit_l"}


class PaperDataError(ValueError):
    """A paper table file is inconsistent; the message names file, row and field."""


@dataclass(frozen=True)
class PaperRow:
    table: int
    experiment: str
    index: int  # 1-based position in the table file (the paper's order)
    network: str
    values: dict[str, float | None]  # every metric of the table, None where not reported/unreadable
    res: int | None = None
    group: str | None = None
    detector: str | None = None
    method: str | None = None
    stage: str | None = None  # the DVC stage whose metrics/<stage>.json reproduces this row
    unreadable: tuple[str, ...] = ()
    reconstructed: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def row_id(self) -> str:
        """Stable id (MLflow tag `paper_row_id`): table, detector, network, resolution."""
        parts = [f"table{self.table}"]
        if self.detector:
            parts.append(slug(self.detector))
        parts.append(slug(self.network) + (f"@{self.res}" if self.res else ""))
        return "/".join(parts)

    @property
    def source(self) -> str:
        where = f"Table {self.table}, row {self.index}"
        return f"{where} ({self.detector}: {self.network})" if self.detector else f"{where} ({self.network})"

    @property
    def is_hiri(self) -> bool:
        return self.network.startswith("HIRI-ViT")

    @property
    def label(self) -> str:
        name = f"{self.detector} · {self.network}" if self.detector else self.network
        return f"{name} @{self.res}" if self.res else name


@dataclass(frozen=True)
class PaperTable:
    table: int
    experiment: str
    task: str
    caption: str
    metrics: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    path: Path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9+.]+", "-", text.lower()).strip("-")


def _table(path: Path) -> PaperTable:
    doc = yaml.safe_load(path.read_text())
    where = path.name
    for key in ("table", "experiment", "task", "caption", "metrics", "rows"):
        if key not in doc:
            raise PaperDataError(f"{where}: missing top-level key {key!r}")
    metrics = tuple(doc["metrics"])
    bad = [m for m in metrics if m not in KNOWN_METRICS]
    if bad:
        raise PaperDataError(f"{where}: unknown metric keys {bad}; known: {KNOWN_METRICS}")
    defaults = doc.get("defaults") or {}
    rows = []
    for i, raw_row in enumerate(doc["rows"], start=1):
        rows.append(_row(raw_row, i, doc, metrics, defaults, f"{where} row {i}"))
    ids = [r.row_id for r in rows]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise PaperDataError(f"{where}: duplicate row ids {dupes}")
    return PaperTable(doc["table"], doc["experiment"], doc["task"], doc["caption"], metrics, tuple(rows), path)


def _row(raw: dict, index: int, doc: dict, metrics: tuple[str, ...], defaults: dict, where: str) -> PaperRow:
    if "network" not in raw:
        raise PaperDataError(f"{where}: no network")
    extra = set(raw) - ROW_FIELDS - set(metrics)
    if extra:
        raise PaperDataError(f"{where} ({raw['network']}): unknown fields {sorted(extra)} "
                             f"(table metrics: {list(metrics)})")
    per_detector = doc.get("detector_metrics")
    if per_detector:  # Table 4: RetinaNet and Mask R-CNN report different columns
        if raw.get("detector") not in per_detector:
            raise PaperDataError(f"{where} ({raw['network']}): detector {raw.get('detector')!r} not in "
                                 f"detector_metrics {sorted(per_detector)}")
        metrics = tuple(per_detector[raw["detector"]])
        extra = set(raw) - ROW_FIELDS - set(metrics)
        if extra:
            raise PaperDataError(f"{where} ({raw['network']}): fields {sorted(extra)} are not columns of "
                                 f"{raw['detector']} ({list(metrics)})")
    missing = [m for m in metrics if m not in raw]
    if missing:
        raise PaperDataError(f"{where} ({raw['network']}): no cell for {missing}; write null for '-'")
    values: dict[str, float | None] = {}
    for m in metrics:
        v = raw[m]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise PaperDataError(f"{where} ({raw['network']}): {m}={v!r} is not a number or null")
        values[m] = None if v is None else float(v)
    unreadable = tuple(raw.get("unreadable") or ())
    for m in unreadable:
        if m not in metrics:
            raise PaperDataError(f"{where} ({raw['network']}): unreadable field {m!r} is not a metric of the table")
        if values[m] is not None:
            raise PaperDataError(f"{where} ({raw['network']}): {m} is marked unreadable but has value {values[m]}")
    reconstructed = {}
    for k, why in (raw.get("reconstructed") or {}).items():
        reconstructed[k] = defaults.get(why, why)  # a key of `defaults` or the reason itself
        if k in metrics and values[k] is None:
            raise PaperDataError(f"{where} ({raw['network']}): {k} is marked reconstructed but is null")
    return PaperRow(
        table=doc["table"], experiment=doc["experiment"], index=index, network=str(raw["network"]), values=values,
        res=raw.get("res"), group=raw.get("group"), detector=raw.get("detector"), method=raw.get("method"),
        stage=raw.get("stage"), unreadable=unreadable, reconstructed=reconstructed,
        raw={k: str(v) for k, v in (raw.get("raw") or {}).items()},
    )


@lru_cache(maxsize=None)
def load_tables(paper_dir: Path = PAPER_DIR) -> tuple[PaperTable, ...]:
    paths = sorted(Path(paper_dir).glob("table*.yaml"), key=lambda p: int(re.sub(r"\D", "", p.stem)))
    if not paths:
        raise PaperDataError(f"{paper_dir}: no table*.yaml files")
    return tuple(_table(p) for p in paths)


def all_rows(paper_dir: Path = PAPER_DIR) -> list[PaperRow]:
    return [r for t in load_tables(paper_dir) for r in t.rows]


def stage_row(stage: str, paper_dir: Path = PAPER_DIR) -> PaperRow:
    """The one paper row that DVC stage `stage` reproduces (an ablation stage: its table and row);
    PaperDataError if none or several name it (train_hiri_s_448 fills three tables' rows)."""
    rows = [r for r in all_rows(paper_dir) if r.stage == stage]
    if len(rows) != 1:
        raise PaperDataError(f"{len(rows)} paper rows name stage {stage!r} ({[r.source for r in rows]}); "
                             f"an ablation stage reproduces exactly one (`stage:` in pipeline/tracking/paper/)")
    return rows[0]


def load_fig1(paper_dir: Path = PAPER_DIR) -> list[dict]:
    return yaml.safe_load((Path(paper_dir) / "fig1.yaml").read_text())["points"]


def data_fingerprint(paper_dir: Path = PAPER_DIR) -> str:
    """Hash of every paper data file, to tag reference runs with the data they came from."""
    h = hashlib.sha256()
    for p in sorted(Path(paper_dir).glob("*.yaml")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# --- the HIRI-ViT counts that pipeline/models/report.py checks our model against ---------------


def hiri_params_m(paper_dir: Path = PAPER_DIR) -> dict[str, float]:
    """Parameters (M) per size from Table 2's 448 rows (the weights do not depend on the input size)."""
    out = {}
    for r in all_rows(paper_dir):
        if r.table == 2 and r.network in HIRI_SIZES and r.res == 448:
            out[HIRI_SIZES[r.network]] = r.values["params_m"]
    return out


def hiri_gflops(paper_dir: Path = PAPER_DIR) -> dict[tuple[str, int], float]:
    """GFLOPs per (size, resolution): Table 2 (224/384/448) and Table 3 (768)."""
    return {(HIRI_SIZES[r.network], r.res): r.values["gflops"] for r in all_rows(paper_dir)
            if r.table in (2, 3) and r.network in HIRI_SIZES and r.values.get("gflops") is not None}


def hiri_detection_params_m(paper_dir: Path = PAPER_DIR) -> dict[str, dict[str, float]]:
    """Table 4 totals (M) per size and detector: {"hiri_vit_s": {"retinanet": 41.1, ...}}."""
    out: dict[str, dict[str, float]] = {}
    for r in all_rows(paper_dir):
        if r.table == 4 and r.network in HIRI_SIZES:
            key = {"RetinaNet": "retinanet", "Mask R-CNN": "maskrcnn"}[r.detector]
            out.setdefault(HIRI_SIZES[r.network], {})[key] = r.values["params_m"]
    return out


def table4_params_m(detector: str, network: str, paper_dir: Path = PAPER_DIR) -> float:
    for r in all_rows(paper_dir):
        if r.table == 4 and r.detector == detector and r.network == network and r.values["params_m"] is not None:
            return r.values["params_m"]
    raise KeyError(f"Table 4 has no {detector} row for {network} with a parameter count")
