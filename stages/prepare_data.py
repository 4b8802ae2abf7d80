"""Stage prepare_data: the built-in dataset, or a record of the real dataset paths.

    python -m stages.prepare_data [--params params.yaml] [--out data/source] [--metrics PATH]

With no dataset path in params.yaml (profile builtin) it generates the built-in set under
<out>/builtin in ImageNet's and ImageNet-V2's layouts; with data.imagenet set it checks the paths
and only records them. Either way <out>/source.json says where convert_imagenet reads from.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from stages._data_common import log_mlflow, run_cli, write_metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None, help="output folder (default data/source)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    ap.add_argument("--metrics", default=None, help="write the stage metrics json here")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)

    def body() -> int:
        from pipeline.config import load_params
        from pipeline.data import builtin
        from pipeline.data.sources import SOURCE_DIR, resolve_sources, uses_builtin

        params = load_params(args.params)
        out = Path(args.out or SOURCE_DIR)
        start = time.time()
        if params.profile == "paper" or not uses_builtin(params):
            resolve_sources(params, out)  # real paths: missing keys or folders fail here, named
        if uses_builtin(params):
            info, kind = builtin.generate(params.data.builtin, out / "builtin", workers=args.workers), "builtin"
        else:
            info, kind = {}, "paths"
            shutil.rmtree(out / "builtin", ignore_errors=True)  # a built-in set from before is stale
        src = resolve_sources(params, out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"kind": kind, "train": str(src.train), "val": str(src.val),
                  "v2": str(src.v2) if src.v2 else None}
        (out / "source.json").write_text(json.dumps(record, indent=1) + "\n")
        metrics = {"kind": kind, **{f"images_{k}": v for k, v in info.get("images", {}).items()},
                   "num_classes": info.get("num_classes"), "seconds": round(time.time() - start, 1)}
        write_metrics(args.metrics, metrics)
        if not args.no_mlflow:
            log_mlflow("prepare_data", {"profile": params.profile, "data": {
                "imagenet": params.data.imagenet, "imagenet_v2": params.data.imagenet_v2,
                "builtin": params.data.builtin.model_dump()}}, metrics)
        print(json.dumps(record))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
