"""Ablation stages: `python -m stages.ablation <run>` trains one row of Tables 7, 8 or 9 (DVC stage
ablation_<run>), as the pretraining stages train theirs: the same worker, recipe (train.<profile>),
launcher and checkpoints, with the run's EMA distillation switch (params.yaml `ablation.runs`).

<run> is a key of ablation.runs, e.g. t8_hr_hr_t_t_t; the paper row it reproduces names its stage
in pipeline/tracking/paper/table{7,8,9}.yaml, and its MLflow run lands in that table's experiment.
"""
from __future__ import annotations

import argparse
import sys

from stages.train import train_stage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run key, e.g. t8_hr_hr_t_t_t")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = ap.parse_args(argv)
    return train_stage("ablation", args.run, args.params, check=_check_model)


def _check_model(spec) -> None:
    """The run names a model the ablations register, before anything launches (the worker imports
    them through the spec's model factory)."""
    import timm

    import pipeline.models.ablations  # noqa: F401 - registers the rows' models

    if not timm.is_model(spec.run.model):
        rows = sorted({r.model for r in pipeline.models.ablations.ROWS.values()})
        raise ValueError(f"ablation.runs.{spec.key}.model: no model {spec.run.model!r}; the rows' models: {rows}")


if __name__ == "__main__":
    sys.exit(main())
