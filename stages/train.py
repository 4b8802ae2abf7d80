"""Training stages: `python -m stages.train <run>` pretrains (DVC stage train_<run>);
`python -m stages.train --finetune <run>` fine-tunes (DVC stage finetune_<run>).

<run> is a key of train.runs / finetune.runs in params.yaml, e.g. hiri_s_448 or hiri_s_768.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run key, e.g. hiri_s_448")
    ap.add_argument("--finetune", action="store_true", help="a fine-tuning run (finetune.runs)")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = ap.parse_args(argv)
    return train_stage("finetune" if args.finetune else "train", args.run, args.params)


def train_stage(kind: str, key: str, params_path: str, check=None) -> int:
    """Validate, then launch stage `<kind>_<key>` and wait for it (what every training stage's command
    does); `check(spec)` raises ValueError for what the kind must also hold before launching."""
    # DeepSpeed's accelerator is chosen inside each rank, from the device it has
    # (pipeline.train.engine.select_accelerator): not here, on a login node that may have no GPU
    from pipeline.config import ParamsError, load_params
    from pipeline.launch.stage import StageError, run_stage
    from pipeline.train.stage import make_spec

    try:
        params = load_params(params_path)  # validated before anything launches
        spec = make_spec(params, kind, key)
        if check is not None:
            check(spec)
        _check_data(params)
    except (ParamsError, StageError, KeyError, FileNotFoundError, ValueError) as err:  # PaperDataError: a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pipeline.launch.cluster import SubmissionError
    from pipeline.launch.local import LaunchError, watch_parent
    from pipeline.slurm_profiles import ProfileError
    from pipeline.launch.slurm import SlurmJobError

    if params.launch.launcher == "local":
        watch_parent()  # `dvc repro` killed: stop too, and the workers follow (they watch this pid)
    try:
        run_stage(spec)
    except (LaunchError, SlurmJobError, SubmissionError, ProfileError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)  # the message carries the job's log tail
        return 1
    return 0


def _check_data(params) -> None:
    """The dataset paths (profile paper) and the conversion's manifest, before launching."""
    from pipeline.data.manifest import load_manifest
    from pipeline.data.sources import FFCV_DIR, resolve_sources

    resolve_sources(params)
    load_manifest(FFCV_DIR)


if __name__ == "__main__":
    sys.exit(main())
