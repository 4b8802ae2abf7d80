"""One transfer run: what a DVC stage coco_* / ade20k_* does, inside each submitit task.

`TransferSpec` is everything a run needs (picklable); `transfer_worker(spec)` is one rank's body:
distributed set-up (torch DDP: gloo on CPU, NCCL on GPU; the model is a torchvision / transformers
module in plain PyTorch, so DeepSpeed's ZeRO would buy nothing at these sizes), the model with its
backbone loaded from the pretraining stage, resume, the loop, then (rank 0) the weights, metrics
json, curves and the MLflow run beside the paper's row.

    outputs/<stage>/model.pt           fine-tuned weights (DVC out)
    metrics/<stage>.json               Table 4 / Table 6 metric keys (DVC metrics)
    plots/<stage>.json                 one row per evaluation (DVC plots)
    outputs/checkpoints/<stage>/       checkpoints while the run is unfinished
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import Params

DATA_DIRS = {"coco": "data/coco", "ade20k": "data/ade20k"}


class TransferError(RuntimeError):
    """A transfer stage cannot start: its pretraining weights or its data are missing."""


@dataclass
class TransferSpec:
    key: str  # the stage name and the transfer.runs key, e.g. coco_maskrcnn_hiri_s
    params: Params
    repo_root: Path
    data_root: Path
    out_dir: Path
    ckpt_dir: Path
    metrics_file: Path
    plots_file: Path
    init_weights: Path
    launcher_pid: int | None = None
    git_commit: str = "unknown"

    @property
    def stage(self) -> str:
        return self.key

    @property
    def run(self):
        return self.params.transfer.run(self.key)

    @property
    def task(self) -> str:
        return "segmentation" if self.run.model == "upernet" else "detection"

    @property
    def recipe(self):
        section = self.params.transfer.segmentation if self.task == "segmentation" else self.params.transfer.detection
        return section[self.params.profile]

    @property
    def arch(self) -> str:
        return self.params.train.run(self.run.init_from).model

    @property
    def run_name(self) -> str:
        return f"{self.run.model}-{self.arch}"

    def fingerprint(self) -> dict:
        from pipeline.train.checkpoint import sha256_file

        return {"recipe": self.recipe.model_dump(mode="json"), "run": self.run.model_dump(mode="json"),
                "profile": self.params.profile, "tasks": self.params.launch.tasks, "arch": self.arch,
                "init_sha256": sha256_file(self.init_weights), "data_root": str(self.data_root)}

    def work(self) -> dict | None:
        return transfer_worker(self)

    def plan(self, nodes: int, tasks_per_node: int, gpus_per_node: int = 0) -> "TransferPlan":
        """The run's layout on that many ranks (what a SLURM stage checks before it submits);
        PlanError names the recipe key when the global batch does not split over the ranks."""
        from pipeline.train.engine import BatchLayoutError, batch_layout
        from pipeline.train.plan import PlanError

        world = nodes * tasks_per_node
        try:
            layout = batch_layout(self.recipe, world)
        except BatchLayoutError as err:
            raise PlanError(f"{self.stage}: transfer.{self.task}.{self.params.profile}.{err.field}: {err}") from None
        return TransferPlan(self.stage, world, layout.micro_batch, layout.accumulation, layout.global_batch)


@dataclass(frozen=True)
class TransferPlan:
    stage: str
    world_size: int
    micro_batch: int
    accumulation: int
    global_batch: int

    def lines(self) -> list[str]:
        return [f"{self.stage}: global batch {self.global_batch} = micro-batch {self.micro_batch} x accumulation "
                f"{self.accumulation} x {self.world_size} ranks"]


def make_transfer_spec(params: Params, key: str, repo_root: str | Path = ".") -> TransferSpec:
    """The run of stage `key`; its pretraining weights and prepared data must exist."""
    from pipeline.tracking.mlflow_run import git_commit

    root = Path(repo_root).resolve()
    run = params.transfer.run(key)  # KeyError naming the known runs
    init = root / "outputs" / f"train_{run.init_from}" / "model.pt"
    if not init.is_file():
        raise TransferError(f"{init}: not found; {key} starts from train_{run.init_from}'s weights "
                            f"(run `dvc repro train_{run.init_from}` first)")
    dataset = "ade20k" if run.model == "upernet" else "coco"
    source = root / DATA_DIRS[dataset] / "source.json"
    if not source.is_file():
        raise TransferError(f"{source}: not found; run `dvc repro prepare_{dataset}` first")
    data_root = Path(json.loads(source.read_text())["root"])
    if not data_root.is_absolute():
        data_root = root / data_root
    return TransferSpec(key=key, params=params, repo_root=root, data_root=data_root, out_dir=root / "outputs" / key,
                        ckpt_dir=root / "outputs" / "checkpoints" / key, metrics_file=root / "metrics" / f"{key}.json",
                        plots_file=root / "plots" / f"{key}.json", init_weights=init, launcher_pid=os.getpid(),
                        git_commit=git_commit(root))


def transfer_worker(spec: TransferSpec) -> dict | None:
    """The body of one rank. Returns the final metrics on rank 0, None elsewhere."""
    from pipeline.launch.local import shared_lock
    from pipeline.launch.stage import workers_lock_path

    with shared_lock(workers_lock_path(spec)):
        return _worker(spec)


def _init_distributed(device: torch.device, world: int) -> None:
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norms: bool) -> list[dict]:
    """AdamW groups. decay_norms False: normalisation layers' weights and biases take no decay
    (Swin's UPerNet config, `custom_keys={'norm': decay_mult 0}`); PVTv2's detection configs
    decay everything."""
    if decay_norms:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
    no_decay = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def _worker(spec: TransferSpec) -> dict | None:
    from pipeline.launch.local import distributed_env, in_slurm_job, rank_device, watch_launcher
    from pipeline.train.checkpoint import seed_all
    from pipeline.train.engine import resolve_precision
    from pipeline.train.preempt import StopRequests, fit_tracked
    from pipeline.train.progress import log

    from .backbone import load_backbone, set_batch_norm
    from .checkpoint import TransferCheckpoints
    from .loop import Fitter
    from .tasks import make_task

    watch_launcher(spec.launcher_pid)
    stop = StopRequests() if in_slurm_job() else None
    env = distributed_env()
    rank, world = env["rank"], env["world_size"]
    device = rank_device(env)
    _init_distributed(device, world)
    recipe, run = spec.recipe, spec.run
    precision = resolve_precision(recipe.precision, device)
    seed_all(run.seed)  # the same new layers on every rank

    task = make_task(spec)
    train, val = task.datasets()
    model = task.build_model()
    backbone = model.backbone.body if task.kind == "detection" else model.backbone
    meta = load_backbone(backbone, spec.init_weights, recipe.weights)
    if rank == 0:
        log(f"[{spec.stage}] backbone {spec.arch} from {spec.init_weights} ({recipe.weights} weights of "
            f"{meta.get('stage')}); {len(train)} training and {len(val)} val images; {precision}")
    model = set_batch_norm(model, backbone, recipe.backbone_bn, world > 1).to(device)
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay, task.kind == "detection"),
                                  lr=recipe.lr, betas=tuple(recipe.betas))
    store = TransferCheckpoints(spec.ckpt_dir, spec.fingerprint(), recipe.keep_checkpoints, rank)
    tracker = _open_tracker(spec, task, log) if rank == 0 else None
    fitter = Fitter(name=spec.stage, task=task, model=model, ddp=ddp, optimizer=optimizer, train=train, val=val,
                    device=device, precision=precision, store=store, rank=rank, world=world,
                    workers=spec.params.data.loader.workers(), stop=stop,
                    on_eval=(lambda row: tracker.log_metrics(_numbers(row), step=row["iter"])) if tracker else None)
    tag = store.prepare(log=log if rank == 0 else (lambda _m: None))
    if tag is not None:
        fitter.resume(tag)
    history = fit_tracked(fitter.fit, tracker, stop, log, spec.stage, rank)

    result = None
    if rank == 0:
        from pipeline.train.checkpoint import atomic_torch_save

        # the weights first, before the counts (which build models and can fail): a rerun then
        # resumes at the end and only writes the outputs
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"state_dict": model.state_dict(), "model": run.model, "arch": spec.arch,
                           "init_from": run.init_from, "stage": spec.stage}, spec.out_dir / "model.pt")
        metrics = {**{k: history[-1][k] for k in task.metric_keys}, **final_counts(spec, model)}
        write_outputs(spec, metrics, history)
        if tracker is not None:
            tracker.log_metrics(_numbers(metrics), step=fitter.state.it)
            tracker.log_artifact(spec.plots_file, "plots")
            tracker.log_artifact(spec.metrics_file, "metrics")
            tracker.finish()
        log(f"[{spec.stage}] done: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        result = metrics
    store.clear()
    (spec.ckpt_dir.parent / f"{spec.stage}.mlflow_run_id").unlink(missing_ok=True)
    return result


def final_counts(spec: TransferSpec, model: torch.nn.Module) -> dict:
    """Parameters (M) of the whole model, and its GFLOPs at the input Tables 4 / 6 count HIRI-ViT
    at (docs/transfer.md: 1600x1200 for the detectors, 1024x1024 for UPerNet), as counted there."""
    from . import counts

    if spec.task == "segmentation":
        gflops = counts.count_upernet(spec.arch, counts.SEG_INPUTS[0]).gflops
    else:
        gflops = counts.count_detector(spec.run.model, spec.arch, counts.padded(counts.DET_INPUT)).gflops
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflops": gflops}


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and v == v}


def _json_value(v):
    return None if isinstance(v, float) and v != v else (round(v, 4) if isinstance(v, float) else v)


def write_outputs(spec: TransferSpec, metrics: dict, history: list[dict]) -> None:
    """metrics json (NaN, e.g. AP_S of a val set without small objects, as null) and the curves."""
    from pipeline.train.checkpoint import atomic_write_text

    atomic_write_text(spec.metrics_file, json.dumps({k: _json_value(float(v)) for k, v in metrics.items()},
                                                    indent=2) + "\n")
    rows = [{k: _json_value(v) for k, v in r.items()} for r in history]
    atomic_write_text(spec.plots_file, json.dumps(rows, indent=2) + "\n")


def _open_tracker(spec: TransferSpec, task, log):
    from pipeline.tracking.mlflow_run import Tracker, flatten, run_id_writer, tracking_uri
    from pipeline.tracking.reference import sync_stage_rows

    id_file = spec.ckpt_dir.parent / f"{spec.stage}.mlflow_run_id"
    resume_id = id_file.read_text().strip() if id_file.is_file() and spec.ckpt_dir.is_dir() else None
    tags = {"git_commit": spec.git_commit, "dvc_stage": spec.stage, "profile": spec.params.profile}
    tracker = Tracker(task.experiment, spec.run_name, tags, uri=tracking_uri(spec.repo_root), run_id=resume_id,
                      warn=log, note=log, on_open=run_id_writer(id_file))
    run_id = tracker.start()
    if run_id is not None:
        sync_stage_rows(spec.stage, tracker.experiment, tracker.uri, warn=log)
        log(f"[{spec.stage}] MLflow: run {spec.run_name} beside the paper's row in experiment {tracker.experiment}: "
            f"{tracker.where_to_look}")
    if run_id is None or run_id != resume_id:  # a new run (or not open yet: the params wait with the rest)
        tracker.log_params(flatten({"profile": spec.params.profile, "recipe": spec.recipe.model_dump(mode="json"),
                                    "run": {"key": spec.key, **spec.run.model_dump(mode="json")},
                                    "launch": spec.params.launch.model_dump(mode="json")}))
    return tracker
