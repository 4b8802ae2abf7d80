"""A training stage's run from params.yaml and a run key (launched by pipeline.launch.stage),
with outputs at the paths dvc.yaml declares. Kinds: train_<key>, finetune_<key>, and the
ablations' ablation_<key> (Tables 7-9: pretraining runs of the models pipeline.models.ablations
registers, which the worker imports through the run's model factory).

    outputs/<stage>/model.pt          final student + EMA weights (DVC out)
    metrics/<stage>.json              final metrics (DVC metrics)
    plots/<stage>.json                one row per epoch (DVC plots)
    outputs/checkpoints/<stage>/      DeepSpeed checkpoints while the run is unfinished
    outputs/submitit/<stage>/         submitit's job folder (per-rank logs)
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Params
from pipeline.launch.stage import StageError

from .run import RunSpec

# Named, not imported: the main training stages neither run nor depend on the ablations' code.
ABLATION_MODELS = "pipeline.models.ablations:create_row_model"


def make_spec(params: Params, kind: str, key: str, repo_root: str | Path = ".", init_weights: Path | None = None,
              **extra) -> RunSpec:
    """The run of stage `<kind>_<key>`. A fine-tuning run starts from its 448 stage's model.pt, which
    must exist, unless `init_weights` names where an upstream job will have written it (a chain
    submitted at once by `python -m pipeline.launch`)."""
    root = Path(repo_root).resolve()
    run = params.training_run(kind, key)  # ValueError naming the kinds, KeyError naming the known runs
    stage = f"{kind}_{key}"
    if kind == "ablation":
        from pipeline.tracking.paper_tables import stage_row

        stage_row(stage)  # its paper row (and so its MLflow experiment) exists: PaperDataError otherwise
        extra.setdefault("model_factory", ABLATION_MODELS)
    init = None
    if kind == "finetune" and init_weights is not None:
        init = Path(init_weights)
    elif kind == "finetune":
        init = root / "outputs" / f"train_{run.init_from}" / "model.pt"
        if not init.is_file():
            raise StageError(f"{init}: not found; fine-tuning {stage} starts from train_{run.init_from}'s weights "
                             f"(run `dvc repro train_{run.init_from}` first)")
    from pipeline.tracking.mlflow_run import git_commit

    spec = RunSpec(kind=kind, key=key, params=params, repo_root=root, ffcv_dir=root / "data" / "ffcv",
                   out_dir=root / "outputs" / stage, ckpt_dir=root / "outputs" / "checkpoints" / stage,
                   metrics_file=root / "metrics" / f"{stage}.json", plots_file=root / "plots" / f"{stage}.json",
                   init_weights=init, launcher_pid=os.getpid(), git_commit=git_commit(root))
    for k, v in extra.items():
        setattr(spec, k, v)
    return spec
