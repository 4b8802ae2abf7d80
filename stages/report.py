"""DVC stages report_inputs and report: the paper beside ours.

    python -m stages.report index   # report_inputs: hash the compared metrics/*.json (cheap, always runs)
    python -m stages.report         # report: reports/paper_vs_ours.{md,html} + figures, MLflow artifacts

Why two stages: a `report` that named metrics/*.json (or metrics/) as deps would make DVC run every
training stage first (they write those files), so `dvc repro report` would train all twelve
models. report_inputs instead always runs and writes the hashes of whatever metrics files exist;
DVC reruns `report` only when that index, the paper data or the report code changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPORT_EXPERIMENT = "paper-vs-ours"
REPORT_TAG = "report_id"


def write_index(metrics_dir: Path, out: Path) -> dict:
    from pipeline.report.ours import metrics_index

    index = metrics_index(metrics_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def build(repo: Path, out_dir: Path, metrics_dir: Path, params_path: Path, measure: bool = True) -> dict:
    from pipeline.config import load_params
    from pipeline.report import figures, render
    from pipeline.report.compare import compared_tables, unmatched_runs
    from pipeline.report.ours import load_our_runs
    from pipeline.tracking.paper_tables import load_fig1, load_tables

    params = load_params(params_path)
    tables = load_tables()
    ours = load_our_runs(metrics_dir, repo, params.profile)
    sections = compared_tables(tables, ours)
    ref_path = out_dir / "paper_reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.is_file() else None

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    table2 = next(t for t in tables if t.table == 2)
    figs = [("Fig. 6: Top-1 against GFLOPs, throughput and parameters, paper (Table 2) and ours",
             figures.fig6(table2, ours, fig_dir / "fig6_top1_vs_cost.png"))]
    measured = []
    if measure:
        cfg = params.report.fig1
        measured = figures.fig1_measure(cfg)
        (fig_dir / "fig1_measurements.json").write_text(json.dumps(measured, indent=1) + "\n")
        figs.append(("Fig. 1: GFLOPs and batch-1 latency against input resolution, measured here",
                     figures.fig1(measured, load_fig1(), cfg.threads, fig_dir / "fig1_cost_vs_resolution.png")))
    fig_refs = [(c, str(p.relative_to(out_dir))) for c, p in figs]

    header = render.header_lines({s: r.profile for s, r in ours.items()}, params.profile, reference)
    extra = []
    if unmatched := unmatched_runs(tables, ours):
        extra = ["## Metrics without a paper row", "",
                 "These stages wrote metrics that no row of the paper data maps to (`stage:` in "
                 f"pipeline/tracking/paper/*.yaml): {', '.join(f'`{s}`' for s in unmatched)}."]
    title = "HIRI-ViT: the paper beside ours"
    md_path, html_path = render.write(out_dir, "paper_vs_ours", render.to_markdown(title, header, sections, fig_refs, extra),
                                      render.to_html(title, header, sections, fig_refs, extra))
    n_lines = sum(len(lines) for _, lines in sections)
    print(f"report: {len(ours)} of our runs, {n_lines} compared cells -> {md_path}, {html_path}")
    return {"paths": [md_path, html_path] + [p for _, p in figs], "measured": measured, "ours": ours}


def log_to_mlflow(result: dict) -> None:
    """Attach the report and figures to one reused run of experiment paper-vs-ours."""
    from pipeline.tracking.mlflow_run import Tracker, tracking_uri

    run_id = None
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri())
        exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
        if exp is not None:
            found = client.search_runs([exp.experiment_id], filter_string=f"tags.{REPORT_TAG} = 'paper_vs_ours'",
                                       max_results=1)
            run_id = found[0].info.run_id if found else None
    except Exception:  # noqa: BLE001 - Tracker.start below reports an unreachable store once
        pass
    tracker = Tracker(REPORT_EXPERIMENT, "paper vs ours", {REPORT_TAG: "paper_vs_ours"}, run_id=run_id)
    if tracker.start() is None:
        return
    tracker.log_metrics({f"fig1_{p['model']}_{p['res']}_{k}": p[k] for p in result["measured"]
                         for k in ("gflops", "latency_ms")})
    for path in result["paths"]:
        tracker.log_artifact(path)
    tracker.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["report", "index"], default="report")
    ap.add_argument("--metrics-dir", default="metrics")
    ap.add_argument("--out-dir", default="reports")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-measure", action="store_true", help="skip the Fig. 1 measurement (tests)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = ap.parse_args(argv)
    repo = Path.cwd()
    if args.what == "index":
        index = write_index(Path(args.metrics_dir), Path(args.out_dir) / "metrics_index.json")
        print(f"report_inputs: {len(index)} compared metrics files")
        return 0
    from pipeline.config import ParamsError
    from pipeline.tracking.paper_tables import PaperDataError

    try:
        result = build(repo, Path(args.out_dir), Path(args.metrics_dir), Path(args.params), measure=not args.no_measure)
    except (ParamsError, PaperDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.no_mlflow:
        log_to_mlflow(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
