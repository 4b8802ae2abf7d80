"""Paper value, ours, difference: one line per (paper row, metric) for every row a stage of ours
reproduces (the HIRI-ViT rows of Tables 2-6, and every row of Tables 7-9: HIRI-ViT-S's by the
main stage, the others by the ablation stages)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.tracking.paper_tables import PaperRow, PaperTable

from .ours import OurRun

NOT_RUN = "not run"
# Columns in the order the paper prints them, accuracy first.
ORDER = ("top1", "top5", "v2_top1", "ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box",
         "ap_mask", "ap50_mask", "ap75_mask", "miou", "params_m", "gflops", "throughput")
LABELS = {"top1": "Top-1 (%)", "top5": "Top-5 (%)", "v2_top1": "V2 Top-1 (%)", "params_m": "Params (M)",
          "gflops": "GFLOPs", "throughput": "Throughput (img/s)", "ap_box": "AP box", "ap50_box": "AP50 box",
          "ap75_box": "AP75 box", "aps_box": "AP small", "apm_box": "AP medium", "apl_box": "AP large",
          "ap_mask": "AP mask", "ap50_mask": "AP50 mask", "ap75_mask": "AP75 mask", "miou": "mIoU (%)"}


@dataclass(frozen=True)
class Line:
    row: PaperRow
    metric: str
    paper: float | None
    paper_note: str  # "" | "unreadable in the paper's text" | "not reported"
    ours: float | None
    status: str  # "ok" | NOT_RUN | "not measured"

    @property
    def diff(self) -> float | None:
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper


def table_lines(table: PaperTable, ours: dict[str, OurRun]) -> list[Line]:
    lines = []
    for row in table.rows:
        if not row.stage:
            continue
        run = ours.get(row.stage)
        for m in sorted(row.values, key=ORDER.index):
            paper = row.values[m]
            note = "" if paper is not None else ("unreadable" if m in row.unreadable else "not reported")
            if run is None:
                lines.append(Line(row, m, paper, note, None, NOT_RUN))
            else:
                value = run.metrics.get(m)
                lines.append(Line(row, m, paper, note, value, "ok" if value is not None else "not measured"))
    return lines


def compared_tables(tables: tuple[PaperTable, ...], ours: dict[str, OurRun]) -> list[tuple[PaperTable, list[Line]]]:
    return [(t, lines) for t in tables if (lines := table_lines(t, ours))]


def unmatched_runs(tables: tuple[PaperTable, ...], ours: dict[str, OurRun]) -> list[str]:
    """Our metrics files that no paper row maps to (a new stage nobody wired into the data)."""
    stages = {r.stage for t in tables for r in t.rows if r.stage}
    return sorted(s for s in ours if s not in stages)
