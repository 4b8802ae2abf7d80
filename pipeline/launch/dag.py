"""Submit every stale stage that DVC targets need to SLURM at once, chained with afterok; or
only show how each would run (`--plan`).

    python -m pipeline.launch --plan train_hiri_l_448                # the layout, checked; submits nothing
    python -m pipeline.launch train_hiri_s_448 train_hiri_s_224      # submit, return at once
    dvc repro train_hiri_s_448 train_hiri_s_224                      # attach, wait, collect outputs
    python -m pipeline.launch --table 8                              # a whole table: one job per row

A table's stages are those its paper rows name (`stage:` in pipeline/tracking/paper/table<N>.yaml):
Table 8 is its three ablation stages and train_hiri_s_448 (its HIRI-ViT-S row); the command prints
the `dvc repro` line that attaches to them.

Independent stages (S, B, L) run side by side; a stage whose upstream is also submitted waits for
it with --dependency=afterok. Each job is recorded under its stage key (pipeline.launch.stagekey),
so `dvc repro` (the stage's own command, launcher slurm) attaches to it instead of submitting
again, and so does a second `dvc repro` after the login shell died. Everything is validated (params,
profile, live partition limits) before the first sbatch; if an sbatch still fails, the jobs this
command already submitted are cancelled, so nothing half-submitted is left behind.

Only the training stages (train_*, finetune_*, ablation_*) run as SLURM jobs; a stale upstream stage of
another kind (prepare_data, convert_imagenet) must be reproduced first (`dvc repro convert_imagenet`).

`--plan` needs neither a reachable cluster nor converted data: per stage it prints the ranks, the
batch layout, learning rate, steps, checkpoints and a memory estimate (the spec's own `plan`,
pipeline.train.plan), then checks the request against the live partition where a SLURM client
answers and says so where none does. A layout that cannot work fails naming the field.

This package imports no training code: the command's entry (`__main__`) passes
pipeline.train.stage.make_spec in.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline.config import ParamsError, load_params
from pipeline.slurm_profiles import ProfileError, load_profile, stage_kind

from . import cluster, slurm
from .cluster import ClusterUnreachable, SubmissionError
from .stage import StageError
from .stagekey import load_stages, stage_key, upstream

LAUNCHED = ("train_", "finetune_", "ablation_")


class LaunchPlanError(RuntimeError):
    pass


def stale_stages(repo_root: Path, targets: list[str]) -> set[str]:
    out = subprocess.run(["dvc", "status", "--json", "--with-deps", *targets], cwd=repo_root,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchPlanError(f"dvc status failed: {out.stderr.strip()}")
    return {name.split(":")[-1] for name in json.loads(out.stdout or "{}")}


def closure(stages: dict, targets: list[str]) -> list[str]:
    """targets and everything upstream, in dependency order."""
    order: list[str] = []

    def visit(n: str, path: tuple = ()):
        if n not in stages:
            raise LaunchPlanError(f"no stage {n!r} in dvc.yaml")
        if n in order:
            return
        for u in upstream(stages, n):
            visit(u, path + (n,))
        order.append(n)

    for t in targets:
        visit(t)
    return order


def _spec(make_spec, params, stage: str, root: Path, plan: list[str], stages: dict):
    """The stage's run. A fine-tuning stage whose init_from stage is in the same plan starts from
    the weights that stage's job will stage (dvc repro has not collected them yet when it runs)."""
    kind, key = stage.split("_", 1)
    init = None
    if kind == "finetune":
        up = f"train_{params.finetune.run(key).init_from}"
        if up in plan:
            init = slurm.staged_dir(root, up, stage_key(root, up, stages)) / "out" / "model.pt"
    return make_spec(params, kind, key, repo_root=root, init_weights=init)


def table_stages(table: int) -> list[str]:
    """The DVC stages that reproduce Table `table`'s rows, in the paper's row order."""
    from pipeline.tracking.paper_tables import load_tables

    tables = {t.table: t for t in load_tables()}
    if table not in tables:
        raise LaunchPlanError(f"no Table {table} in the paper data (tables: {sorted(tables)})")
    stages = list(dict.fromkeys(r.stage for r in tables[table].rows if r.stage))
    if not stages:
        raise LaunchPlanError(f"no stage of ours reproduces a row of Table {table}")
    return stages


def _pending(rec: dict) -> bool:
    """Whether a dependency on this job is still needed (a finished job may be gone from SLURM)."""
    return cluster.job_state(rec["job_id"]) in cluster.ACTIVE


def launch(targets: list[str], make_spec, repo_root: Path = Path("."), echo=print) -> dict[str, dict]:
    """Submit the stale stages `targets` need; `make_spec` is pipeline.train.stage.make_spec (passed
    in by the command, so that this package imports no training code)."""

    root = Path(repo_root).resolve()
    params = load_params(root / "params.yaml")
    if params.launch.launcher != "slurm":
        raise LaunchPlanError("params.yaml launch.launcher is 'local': set launcher: slurm and a profile")
    stages = load_stages(root)  # as DVC resolves dvc.yaml (templated params and deps)
    order = closure(stages, targets)
    stale = stale_stages(root, targets)
    plan: list[str] = []
    for n in order:
        if n in stale or any(u in plan for u in upstream(stages, n)):
            if not n.startswith(LAUNCHED):
                raise LaunchPlanError(f"stage {n} is stale and does not run as a SLURM job: "
                                      f"run `dvc repro {n}` first")
            plan.append(n)
    # validate everything before the first sbatch: specs (inputs present) and the live partitions
    specs = {n: _spec(make_spec, params, n, root, plan, stages) for n in plan}
    for n in plan:
        slurm.preflight(specs[n], echo)
        slurm.executor_for(specs[n], root / "outputs" / "submitit" / n)
    submitted: dict[str, dict] = {}
    new_ids: list[str] = []
    try:
        for n in plan:
            deps = [submitted[u]["job_id"] for u in upstream(stages, n) if u in submitted and _pending(submitted[u])]
            rec = slurm.submit(specs[n], stage_key(root, n, stages), dependency=deps or None, planned=True)
            submitted[n] = rec
            if not rec["attached"]:
                new_ids.append(rec["job_id"])
            echo(f"{n}: {'already submitted as' if rec['attached'] else 'submitted'} job {rec['job_id']}"
                 + (f" (after {', '.join(deps)})" if deps else ""))
    except Exception:
        if new_ids:
            subprocess.run(["scancel", *new_ids], check=False)
            for n, rec in submitted.items():
                if rec["job_id"] in new_ids:
                    (slurm.jobs_dir(root) / f"{n}.json").unlink(missing_ok=True)
            echo(f"cancelled the jobs submitted by this command: {', '.join(new_ids)}")
        raise
    if not plan:
        echo("nothing to submit: every target is up to date")
    return submitted


def plan(targets: list[str], make_spec, repo_root: Path = Path("."), echo=print, live: bool = True) -> None:
    """Print how each target stage would run, checked (SubmissionError naming the field if it cannot)."""
    root = Path(repo_root).resolve()
    params = load_params(root / "params.yaml")
    how = params.launch
    for stage in targets:
        if not stage.startswith(LAUNCHED):
            raise LaunchPlanError(f"{stage}: --plan covers the training stages (train_*, finetune_*, ablation_*)")
        kind, key = stage.split("_", 1)
        init = None
        if kind == "finetune":  # where the 448 stage writes its weights: no need for them to exist yet
            init = root / "outputs" / f"train_{params.finetune.run(key).init_from}" / "model.pt"
        spec = make_spec(params, kind, key, repo_root=root, init_weights=init)
        if how.launcher == "slurm":
            where = f"slurm/profiles/{how.profile}.yaml: kinds.{stage_kind(stage)}"
            ranks = slurm.profile_ranks(spec)
        else:
            import torch

            where, ranks = "launch.tasks (launcher local)", {
                "nodes": 1, "tasks_per_node": how.tasks,
                "gpus_per_node": how.tasks if torch.cuda.is_available() else 0}
        for line in spec.plan(**ranks).lines():
            echo(line)
        echo(f"  ranks from      {where}")
        if how.launcher != "slurm":
            continue
        if not live:
            echo("  live checks     skipped (--offline)")
            continue
        req = load_profile(how.profile).request(stage_kind(stage))
        try:
            cluster.check_request(req, where)
            echo(f"  live checks     partition {req.partition!r} has the nodes, GPUs, CPUs, memory and time asked for")
        except ClusterUnreachable as err:
            echo(f"  live checks     skipped: the cluster did not answer ({err})")


def main(make_spec, argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="DVC stages, e.g. train_hiri_s_448")
    ap.add_argument("--table", type=int, action="append", default=[], metavar="N",
                    help="every stage of Table N's rows (repeatable), e.g. --table 8")
    ap.add_argument("--plan", action="store_true", help="print and check each stage's layout; submit nothing")
    ap.add_argument("--offline", action="store_true", help="with --plan: skip the live partition checks")
    args = ap.parse_args(argv)
    from pipeline.tracking.paper_tables import PaperDataError

    try:
        targets = list(dict.fromkeys(args.targets + [s for t in args.table for s in table_stages(t)]))
        if not targets:
            ap.error("name DVC stages or --table N")
        if args.plan:
            plan(targets, make_spec, live=not args.offline)
            return 0
        launch(targets, make_spec)
    except (LaunchPlanError, SubmissionError, ParamsError, PaperDataError, ProfileError, StageError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("then: dvc repro " + " ".join(targets) + "   (attaches to these jobs)")
    return 0
