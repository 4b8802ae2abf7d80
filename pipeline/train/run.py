"""One whole training run: what a DVC training stage does, inside each submitit task.

`RunSpec` is everything a run needs (picklable, built by `make_spec` from params.yaml);
`train_worker(spec)` is the function submitit runs once per rank: distributed set-up from the
JobEnvironment, model, EMA teacher, DeepSpeed engine, data, resume, the loop, then (rank 0) the
final evaluation of student and teacher, the weights, metrics json, curves and the MLflow run.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.config import AblationRun, Params, RecipeParams, TrainRun
from pipeline.launch.local import distributed_env, in_slurm_job, rank_device, shared_lock, watch_launcher
from pipeline.launch.stage import workers_lock_path

from .checkpoint import seed_all, sha256_file

METRIC_KEYS = ("top1", "top5", "v2_top1", "ema_top1", "ema_top5", "ema_v2_top1", "ema_map_top1", "ema_map_agreement",
               "params_m", "gflops", "throughput")
# an ablation run logs to the experiment of the table its paper row is in (table7-ablation, ...)
EXPERIMENTS = {"train": "table2-imagenet", "finetune": "table3-imagenet-768"}


@dataclass
class RunSpec:
    kind: str  # "train" | "finetune" | "ablation"
    key: str  # the run's key under train.runs / finetune.runs / ablation.runs, e.g. hiri_s_448
    params: Params
    repo_root: Path
    ffcv_dir: Path
    out_dir: Path  # final weights: <out_dir>/model.pt (the DVC out)
    ckpt_dir: Path  # checkpoints, outside the DVC out so that `dvc repro` does not wipe them
    metrics_file: Path
    plots_file: Path
    init_weights: Path | None = None  # fine-tuning: the 448 run's model.pt
    launcher_pid: int | None = None
    git_commit: str = "unknown"
    # "module:function" returning a pipeline.train.data.TrainData; tests use small in-memory sets
    data_factory: str | None = None
    data_overrides: dict = field(default_factory=dict)  # backend / num_workers for ProjectData
    # "module:function" building the model from (name, img_size, num_classes, drop_path_rate), for
    # models that timm.create_model(name, img_size=, ...) cannot build or whose import registers
    # them in the worker (the ablations: pipeline.models.ablations:create_row_model); None = that call
    model_factory: str | None = None

    @property
    def stage(self) -> str:
        return f"{self.kind}_{self.key}"

    def work(self) -> dict | None:
        """One rank of the run (what the launchers call)."""
        return train_worker(self)

    def plan(self, nodes: int, tasks_per_node: int, gpus_per_node: int = 0):
        """The run's preflight on that many ranks (what the launchers check before submitting): a
        pipeline.train.plan.RunPlan, or PlanError naming the params key at fault."""
        from .plan import Ranks, plan_run

        return plan_run(self, Ranks(nodes, tasks_per_node, gpus_per_node), lambda: build_arch(self, 1000))

    @property
    def recipe(self) -> RecipeParams:
        if self.kind == "ablation":  # the pretraining recipe, with the run's EMA distillation switch
            return self.run.recipe(self.params.train.recipe(self.params.profile))
        section = self.params.train if self.kind == "train" else self.params.finetune
        return section.recipe(self.params.profile)

    @property
    def run(self) -> TrainRun | AblationRun:
        return self.params.training_run(self.kind, self.key)

    @property
    def experiment(self) -> str:
        if self.kind == "ablation":
            from pipeline.tracking.paper_tables import stage_row

            return stage_row(self.stage).experiment
        return EXPERIMENTS[self.kind]

    @property
    def run_name(self) -> str:
        return f"{self.run.model}@{self.run.img_size}"

    def fingerprint(self) -> dict:
        """What the checkpoints depend on: resuming under anything else would be wrong."""
        fp = {"recipe": self.recipe.model_dump(mode="json"), "run": self.run.model_dump(mode="json"),
              "data": self.params.data.model_dump(mode="json"), "tasks": self.params.launch.tasks,
              "profile": self.params.profile, "data_factory": self.data_factory,
              "data_overrides": self.data_overrides}
        if self.init_weights is not None:
            fp["init_sha256"] = sha256_file(self.init_weights)
        return fp


def _resolve(factory: str):
    """The function a "module:function" string names (importing the module)."""
    module, _, fn = factory.partition(":")
    return getattr(importlib.import_module(module), fn)


def build_data(spec: RunSpec):
    if spec.data_factory:
        return _resolve(spec.data_factory)(spec)
    from .data import ProjectData

    return ProjectData(spec.params, spec.run.img_size, spec.ffcv_dir, **spec.data_overrides)


def build_arch(spec: RunSpec, num_classes: int):
    """The run's model, freshly initialised: timm's registry, or the run's model factory."""
    import timm

    import pipeline.models  # noqa: F401 - registers hiri_vit_* with timm

    run, recipe = spec.run, spec.recipe
    drop_path_rate = None if run.drop_path_rate is None else run.drop_path_rate * recipe.drop_path_scale
    if spec.model_factory:
        return _resolve(spec.model_factory)(run.model, run.img_size, num_classes, drop_path_rate)
    return timm.create_model(run.model, img_size=run.img_size, num_classes=num_classes, drop_path_rate=drop_path_rate)


def build_model(spec: RunSpec, num_classes: int):
    """The run's model, with the weights of `spec.init_weights` when it names some."""
    run = spec.run
    model = build_arch(spec, num_classes)
    if spec.init_weights is not None:
        # The student: the model the loss trained at 448; the 768 run's own EMA teacher starts from it too.
        state = torch.load(spec.init_weights, map_location="cpu", weights_only=True)
        if state.get("num_classes") != num_classes:
            raise ValueError(f"{spec.init_weights}: {state.get('num_classes')} classes, this data has {num_classes}")
        try:
            missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
        except ValueError as err:  # the stem stride the weights record is not this model's
            raise ValueError(f"{spec.init_weights} does not fit {run.model}@{run.img_size}: {err}") from None
        if missing or unexpected:
            raise ValueError(f"{spec.init_weights} does not fit {run.model}@{run.img_size}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        print(f"[{spec.stage}] initialised from {spec.init_weights} ({state.get('stage')}, "
              f"{state.get('arch')}@{state.get('img_size')})", flush=True)
    return model


def train_worker(spec: RunSpec) -> dict | None:
    """The body of one rank. Returns the final metrics on rank 0, None elsewhere."""
    with shared_lock(workers_lock_path(spec)):
        return _train_worker(spec)


def _train_worker(spec: RunSpec) -> dict | None:
    from pipeline.models.hiri_vit import HiriViT, model_file

    from .checkpoint import CheckpointStore, atomic_torch_save
    from .engine import batch_layout, build_engine, init_distributed, resolve_precision, scaled_lr, sync_batchnorm
    from .ema_distill import EmaTeacher
    from .loop import Trainer
    from .preempt import StopRequests, fit_tracked
    from .progress import log

    watch_launcher(spec.launcher_pid)
    stop = StopRequests() if in_slurm_job() else None  # before the first step: a signal is never lost
    env = distributed_env()
    rank, world = env["rank"], env["world_size"]
    device = rank_device(env)
    init_distributed(device)
    if world > 1:  # where each rank runs, and where the ranks met (the first node of the job's node list)
        log(f"[{spec.stage}] rank {rank} of {world} on {socket.gethostname()}, rendezvous {env['master']}")
    recipe, run = spec.recipe, spec.run
    precision = resolve_precision(recipe.precision, device)
    layout = batch_layout(recipe, world)
    seed_all(run.seed)  # same initial weights on every rank

    data = build_data(spec)
    model = sync_batchnorm(build_model(spec, data.num_classes), recipe.sync_bn, device, world).to(device)
    teacher = EmaTeacher(model, decay=recipe.ema.decay, warmup=recipe.ema.warmup, alpha=recipe.ema.alpha,
                         alpha_ramp=recipe.ema.alpha_ramp)
    engine, optimizer = build_engine(model, recipe, layout, device, precision)
    train_batches = data.train(layout.micro_batch, run.seed, world, device)
    val = data.evaluation("val", recipe.eval_batch_size, rank, world)  # this rank's shard
    store = CheckpointStore(spec.ckpt_dir, spec.fingerprint(), recipe.keep_checkpoints, rank)

    tracker = None
    if rank == 0:
        tracker = _open_tracker(spec, log)
    trainer = Trainer(name=spec.stage, engine=engine, optimizer=optimizer, teacher=teacher, recipe=recipe,
                      layout=layout, train_batches=train_batches, val_batches=val, num_classes=data.num_classes,
                      seed=run.seed, device=device, precision=precision, store=store, base_lr=scaled_lr(recipe),
                      on_epoch=(lambda row: tracker.log_metrics(_curve_metrics(row), step=row["step"]))
                      if tracker else None, stop=stop)
    history = fit_tracked(trainer.fit, tracker, stop, log, spec.stage, rank)

    student = engine.module
    if rank == 0:
        # the weights first, before anything that can still fail: a rerun then resumes from the last
        # checkpoint (no training left) and only evaluates again
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(student, HiriViT):
            weights = model_file(student, teacher.module, run.model, data.num_classes, spec.stage)
        else:  # a Table 9 timm backbone: timm's checkpoint keys, and no stem stride to record
            weights = {"state_dict": student.state_dict(), "state_dict_ema": teacher.module.state_dict(),
                       "arch": run.model, "img_size": run.img_size, "num_classes": data.num_classes,
                       "stage": spec.stage}
        atomic_torch_save(weights, spec.out_dir / "model.pt")
    metrics = final_metrics(student, teacher.module, data, recipe, run.img_size, device, precision,
                            log if rank == 0 else (lambda *_: None), rank, world,
                            val_batches=val, student_val=trainer.final_val)
    result = None
    if rank == 0:
        write_outputs(spec, metrics, history)
        if tracker is not None:
            tracker.log_metrics(metrics, step=trainer.state.step)
            for path in _plot_artifacts(spec, history):
                tracker.log_artifact(path, "plots")
            tracker.log_artifact(spec.metrics_file, "metrics")
            tracker.finish()
        log(f"[{spec.stage}] done: " + ", ".join(f"{k} {metrics[k]:.2f}" for k in METRIC_KEYS))
        result = metrics
    store.clear()  # the final weights are written: a rerun starts afresh
    _close_run_id(spec)
    return result


def final_metrics(student, teacher, data, recipe: RecipeParams, img_size: int, device, precision, log,
                  rank: int = 0, world: int = 1, val_batches=None, student_val=None) -> dict | None:
    """Every rank evaluates its shard (the counts are summed); rank 0 then adds the model's cost and
    returns the metrics, the other ranks None. val_batches: this rank's shard of val, the loop's
    loader reused rather than built again; student_val: the student's Accuracy on it after the
    loop's last epoch, taken with these very weights (reused, not recomputed; None evaluates it
    here, e.g. in a rerun that resumed after the last epoch)."""
    from .evaluate import accuracy, count_params_m, gflops, throughput

    # A model without a dense head (Table 9's timm backbones) has no teacher map to read: null.
    out: dict[str, float] = {"ema_map_top1": float("nan"), "ema_map_agreement": float("nan")}
    for split, prefix_keys in (("val", ("top1", "top5")), ("v2", ("v2_top1",))):
        batches = val_batches if split == "val" and val_batches is not None else \
            data.evaluation(split, recipe.eval_batch_size, rank, world)
        for who, model in (("", student), ("ema_", teacher)):
            if batches is None:
                for k in prefix_keys:
                    out[who + k] = float("nan")
                continue
            # The teacher's own map on val: how far AvgPool(softmax(P)), the distillation target,
            # is the teacher's prediction (docs/training.md, "The teacher's map").
            teacher_map = who == "ema_" and split == "val" and hasattr(model, "dense_head")
            reuse = who == "" and split == "val" and student_val is not None
            acc = student_val if reuse else accuracy(model, batches, device, precision, teacher_map=teacher_map)
            out[who + prefix_keys[0]] = acc.top1
            if len(prefix_keys) > 1:
                out[who + prefix_keys[1]] = acc.top5
            log(f"  {who or 'student '}{split}: top-1 {acc.top1:.2f}%, top-5 {acc.top5:.2f}% ({acc.images} images)")
            if teacher_map:
                out["ema_map_top1"], out["ema_map_agreement"] = acc.map_top1, acc.map_agreement
                log(f"  ema map {split}: top-1 {acc.map_top1:.2f}%, agrees with the teacher's own top-1 on "
                    f"{acc.map_agreement:.2f}% of images")
    if rank != 0:
        return None
    out["params_m"] = count_params_m(student)
    out["gflops"] = gflops(student, img_size)
    out["throughput"] = throughput(student, img_size, recipe.throughput_batch, recipe.throughput_iters, device,
                                   precision)
    return {k: out[k] for k in METRIC_KEYS}


def _curve_metrics(row: dict) -> dict:
    return {"train_loss": row["loss"], "lr": row["lr"], "val_top1": row["val_top1"],
            "images_per_s": row["img_per_s"], "epoch": row["epoch"]}


def write_outputs(spec: RunSpec, metrics: dict, history: list[dict]) -> None:
    from .checkpoint import atomic_write_text

    clean = {k: (None if v != v else round(float(v), 4)) for k, v in metrics.items()}  # NaN -> null
    atomic_write_text(spec.metrics_file, json.dumps(clean, indent=2) + "\n")
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in history]
    atomic_write_text(spec.plots_file, json.dumps(rows, indent=2) + "\n")


def _plot_artifacts(spec: RunSpec, history: list[dict]) -> list[Path]:
    paths = [spec.plots_file]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        epochs = [r["epoch"] for r in history]
        for ax, key, title in zip(axes, ("loss", "val_top1", "lr"), ("train loss", "val Top-1 (%)", "learning rate")):
            ax.plot(epochs, [r[key] for r in history], marker="o")
            ax.set_title(title)
            ax.set_xlabel("epoch")
        fig.suptitle(spec.stage)
        fig.tight_layout()
        png = spec.ckpt_dir.parent / f"{spec.stage}_curves.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=80)
        plt.close(fig)
        paths.append(png)
    except Exception as err:  # noqa: BLE001 - a plot is a nicety, never a failure
        print(f"could not render the curves png: {err}")
    return paths


def _run_id_file(spec: RunSpec) -> Path:
    return spec.ckpt_dir.parent / f"{spec.stage}.mlflow_run_id"


def _open_tracker(spec: RunSpec, log):
    from pipeline.tracking.mlflow_run import Tracker, flatten, run_id_writer, tracking_uri
    from pipeline.tracking.reference import sync_stage_rows

    id_file = _run_id_file(spec)
    # a resumed run continues the MLflow run of the killed one, so its curves stay in one place
    resume_id = id_file.read_text().strip() if id_file.is_file() and spec.ckpt_dir.is_dir() else None
    tags = {"git_commit": spec.git_commit, "dvc_stage": spec.stage, "profile": spec.params.profile}
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        if os.environ.get(var):
            tags[var.lower()] = os.environ[var]
    # the id file names the run to reopen; written whenever the run opens (also late, after an outage)
    tracker = Tracker(spec.experiment, spec.run_name, tags, uri=tracking_uri(spec.repo_root),
                      run_id=resume_id, warn=log, note=log, on_open=run_id_writer(id_file))
    run_id = tracker.start()
    if run_id is not None:
        # the paper's row for this stage beside our run, so the UI compares them after this stage alone
        paper = sync_stage_rows(spec.stage, tracker.experiment, tracker.uri, warn=log)
        beside = " beside the paper's row" if paper.logged and paper.experiments else ""
        log(f"[{spec.stage}] MLflow: run {spec.run_name}{beside} in experiment {tracker.experiment}: "
            f"{tracker.where_to_look}")
    if run_id is None or run_id != resume_id:  # a new run (or not open yet: the params wait with the rest)
        p = spec.params
        tracker.log_params(flatten({"profile": p.profile, "recipe": spec.recipe.model_dump(mode="json"),
                                    "run": {"key": spec.key, **spec.run.model_dump(mode="json")},
                                    "launch": p.launch.model_dump(mode="json"),
                                    "data": p.data.model_dump(mode="json"), "section": spec.kind}))
    return tracker


def _close_run_id(spec: RunSpec) -> None:
    _run_id_file(spec).unlink(missing_ok=True)
