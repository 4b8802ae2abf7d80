"""DVC stage paper_reference: log every row of the paper's Tables 2-9 as an MLflow run tagged
source=paper (pipeline/tracking/reference.py), and write a small summary for the report stage.

    python -m stages.paper_reference --out reports/paper_reference.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/paper_reference.json", help="summary json (DVC out)")
    args = ap.parse_args(argv)

    from pipeline.tracking.paper_tables import PaperDataError, all_rows
    from pipeline.tracking.reference import sync_paper_runs

    try:
        rows = all_rows()
    except PaperDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = sync_paper_runs(rows)
    print(f"paper_reference: {len(rows)} paper rows -> {result.uri}: {result.created} created, "
          f"{result.updated} updated, {result.unchanged} unchanged, {result.deleted} deleted")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No timestamps or run counts of this call: the file changes only when the outcome does.
    summary = result.summary()
    summary["tracking_uri"] = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") \
        else "sqlite:///<repo>/mlflow.db"  # not the absolute path: the same file on every clone
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
