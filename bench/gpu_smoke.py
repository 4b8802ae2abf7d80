"""GPU smoke run: the paper-scale training step on one device, killed and resumed once, then a table.

Needs only what a bare GPU machine has: torch, torchvision, timm, numpy and pyyaml (no DeepSpeed,
FFCV, DVC, MLflow, submitit, fvcore or pydantic; tests/test_gpu_smoke.py runs it with those
blocked). What it runs, all of it the project's own code where that code imports without them:

- HIRI-ViT-S at 448 (pipeline.models), channels_last, AdamW with timm's parameter groups
  (pipeline.train.engine.build_optimizer), warm-up + cosine (pipeline.train.schedule);
- the loop's step in plain PyTorch with bf16 autocast: the EMA teacher's map of the unmixed batch,
  Mixup/CutMix, the EMA-distillation target (pipeline.train.ema_distill, .mixing), soft-target
  cross-entropy, gradient clipping, the EMA update; the paper recipe's values (params.yaml
  `train.paper`) and its per-GPU micro-batch (batch_size 1024 over Section 5.1's 8 GPUs = 128;
  halved until it fits, and said so);
- learnable synthetic images made on the device (a colour per class plus noise), no loader;
- a worker process trains to step K, checkpoints to disk and is SIGKILLed; a fresh worker
  resumes from that checkpoint and must continue at step K + 1; it trains to the end, evaluates
  Top-1 on held-out images and reports;
- then inference throughput of HIRI-ViT-S@448, PVTv2-B2@224 and Swin-T@224, each on its fast
  path (bench/throughput.py), beside the paper's V100 numbers (Table 2).

Model FLOP utilisation counts 4 forward passes per image (the student's forward and its
backward at twice the forward, the teacher's forward) at 2 FLOPs per multiply-add, the
multiply-adds from fvcore or, where fvcore is missing, its cached count (bench/macs.py: which one
is printed), over the device's dense bf16 peak (GPU_PEAK_TFLOPS, or --peak-tflops).

    python -m bench.gpu_smoke                          # one GPU: 300 steps at micro-batch 128
    python -m bench.gpu_smoke --device cpu --steps 3   # the same path end to end on a CPU, small batches
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import timm
import torch
import yaml
from timm.loss import SoftTargetCrossEntropy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline.models  # noqa: E402,F401  (registers hiri_vit_*)
from bench.macs import gmacs  # noqa: E402
from bench.throughput import time_models  # noqa: E402
from pipeline.train.checkpoint import atomic_torch_save, rng_state, set_rng_state  # noqa: E402
from pipeline.train.ema_distill import EmaTeacher, distill_target, teacher_target  # noqa: E402
from pipeline.train.engine import MEMORY_FORMAT, build_optimizer, resolve_precision, scaled_lr  # noqa: E402
from pipeline.train.evaluate import accuracy, autocast, bf16_native  # noqa: E402
from pipeline.train.mixing import RecordingMixup  # noqa: E402
from pipeline.train.schedule import build_scheduler  # noqa: E402

# Dense (no sparsity) bf16 tensor peaks from NVIDIA's data sheets, TFLOP/s; first match wins.
GPU_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                   ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10", 125.0),
                   ("L4", 121.0))
PAPER_GPUS = 8  # Section 5.1: "over 8 V100 GPUs", batch size 1,024
# the Table 2 rows the throughput rows stand beside (network names as in pipeline/tracking/paper/table2.yaml)
THROUGHPUT_MODELS = (("hiri_vit_s", 448, "HIRI-ViT-S"), ("pvt_v2_b2", 224, "PVTv2-B2"),
                     ("swin_tiny_patch4_window7_224", 224, "Swin-T"))
NUM_CLASSES = 1000  # the paper's head; the synthetic images use the first SYNTHETIC_CLASSES of them
SYNTHETIC_CLASSES = 10
HOLD = "HOLDING FOR THE KILL"  # worker 1's last line: its checkpoint is on disk


@dataclass
class Config:
    device: str
    steps: int
    micro_batch: int
    img_size: int
    kill_at: int
    out: Path
    eval_batches: int
    throughput_batch: int
    compile: bool
    seed: int = 0


RUN = "hiri_s_448"  # the params.yaml run whose model, resolution and drop-path rate are trained


def paper_recipe() -> tuple[dict, dict]:
    """params.yaml's `train.paper` recipe and run RUN, read with yaml alone (pipeline.config needs
    pydantic)."""
    train = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    return train["paper"], train["runs"][RUN]


def paper_throughput() -> dict[tuple[str, int], float]:
    """Table 2's V100 images/s of the rows THROUGHPUT_MODELS names, as transcribed in the repo."""
    rows = yaml.safe_load((REPO / "pipeline/tracking/paper/table2.yaml").read_text())["rows"]
    wanted = {(net, res): name for name, res, net in THROUGHPUT_MODELS}
    return {(wanted[(r["network"], r["res"])], r["res"]): r["throughput"] for r in rows
            if (r["network"], r["res"]) in wanted}


# ---- the worker: one process trains, checkpoints, and (worker 2) evaluates ------------------------

class DeviceImages:
    """Learnable synthetic batches made on the device: each class a colour, plus noise (as
    pipeline.train.synthetic, which builds its sets on the CPU). Batch i is a function of
    (seed, i), so a resumed worker draws what the killed one would have."""

    def __init__(self, img_size: int, batch: int, device: torch.device, seed: int):
        self.img_size, self.batch, self.device, self.seed = img_size, batch, device, seed
        g = torch.Generator(device="cpu").manual_seed(1234)
        self.palette = (torch.rand(SYNTHETIC_CLASSES, 3, 1, 1, generator=g) * 2 - 1).to(device)

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + index)
        y = torch.randint(0, SYNTHETIC_CLASSES, (self.batch,), device=self.device, generator=g)
        x = torch.randn(self.batch, 3, self.img_size, self.img_size, device=self.device, generator=g)
        x = (self.palette[y] + 0.5 * x).contiguous(memory_format=torch.channels_last)
        return x, y


def _recipe(cfg: Config) -> SimpleNamespace:
    """The paper recipe for one device: global batch = the micro-batch (no accumulation, so the
    linear scaling rule scales lr by micro_batch / 1024), and the schedule squeezed into the
    smoke run (10% warm-up, then cosine to the paper's floor)."""
    r = paper_recipe()[0]
    mix, ema = SimpleNamespace(**r.pop("mix")), SimpleNamespace(**r.pop("ema"))
    return SimpleNamespace(**{**r, "batch_size": cfg.micro_batch, "epochs": 1, "warmup_epochs": 0.1},
                           mix=mix, ema=ema)


class SmokeTrainer:
    """pipeline.train.loop.Trainer's step without DeepSpeed (which the machine lacks): same
    teacher, mixing, target, loss, clipping, schedule and EMA update, bf16 autocast."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.precision = resolve_precision("auto", self.device)
        recipe, run = _recipe(cfg), paper_recipe()[1]
        torch.manual_seed(cfg.seed)
        self.model = timm.create_model(run["model"], img_size=cfg.img_size, num_classes=NUM_CLASSES,
                                       drop_path_rate=run["drop_path_rate"] * recipe.drop_path_scale)
        self.model.to(self.device).to(memory_format=MEMORY_FORMAT).train()
        self.teacher = EmaTeacher(self.model, decay=recipe.ema.decay, warmup=recipe.ema.warmup,
                                  alpha=recipe.ema.alpha, alpha_ramp=recipe.ema.alpha_ramp)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = build_scheduler(self.optimizer, recipe, cfg.steps, scaled_lr(recipe))
        m = recipe.mix
        self.mixup = RecordingMixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob,
                                    switch_prob=m.switch_prob, mode="batch", label_smoothing=m.label_smoothing,
                                    num_classes=NUM_CLASSES)
        self.criterion = SoftTargetCrossEntropy()
        self.clip = recipe.clip_grad
        self.data = DeviceImages(cfg.img_size, cfg.micro_batch, self.device, cfg.seed)
        self.step = 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the loss on the device (no host sync)."""
        with autocast(self.device, self.precision):
            probs = self.teacher.prob_map(x)
        x, y_tilde, info = self.mixup(x, y)
        target = distill_target(y_tilde, teacher_target(probs, info, tuple(x.shape[-2:])),
                                self.teacher.alpha_at(self.step))
        with autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = self.criterion(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.step += 1
        self.scheduler.step_update(self.step)
        self.teacher.update(self.model, self.step)
        return loss.detach()

    # -- checkpoints: one file, written atomically (pipeline.train.checkpoint) ----------------------
    @property
    def ckpt_path(self) -> Path:
        return self.cfg.out / "checkpoint.pt"

    def save(self) -> None:
        atomic_torch_save({"step": self.step, "model": self.model.state_dict(), "ema": self.teacher.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "rng": rng_state()}, self.ckpt_path)

    def resume(self) -> int:
        if not self.ckpt_path.is_file():
            return 0
        # on the CPU: the RNG states must be CPU tensors; load_state_dict copies the rest to the device
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)  # our own file (numpy RNG)
        self.model.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.scheduler.step_update(self.step)
        return self.step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "peak GPU memory allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of the process"


def worker(cfg: Config, hold_at: int | None) -> None:
    """Train from the checkpoint (if any) to `hold_at` (then save, announce HOLD and wait to be
    killed) or to cfg.steps (then evaluate and write worker2.json)."""
    trainer = SmokeTrainer(cfg)
    device = trainer.device
    start = trainer.resume()
    end = hold_at if hold_at is not None else cfg.steps
    print(f"[worker] {'resumed at' if start else 'starting at'} step {start}, training to step {end}, micro-batch "
          f"{cfg.micro_batch}, {trainer.precision}, {cfg.device}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # steps left out of the timing: the first (allocation, kernel selection) and up to 10% more
    warm = min(10, max(1, (end - start) // 10)) if end - start > 1 else 0
    losses, t0 = {}, time.perf_counter()
    t_window = t0 if warm == 0 else None
    log_every = max(1, (end - start) // 10)
    while trainer.step < end:
        x, y = trainer.data.batch_at(trainer.step)
        loss = trainer.train_step(x, y)
        if trainer.step == start + warm:
            _sync(device)
            t_window = time.perf_counter()
            print(f"[worker] {warm} warm-up step(s) done after {t_window - t0:.1f} s", flush=True)
        if trainer.step % log_every == 0 or trainer.step == end:
            losses[trainer.step] = float(loss)  # the only host sync: at logging steps
            print(f"[worker] step {trainer.step}/{cfg.steps} loss {losses[trainer.step]:.4f}", flush=True)
    _sync(device)
    timed_steps = end - start - warm
    step_s = (time.perf_counter() - t_window) / timed_steps
    peak, peak_what = _peak_memory_gib(device)
    report = {"first_step": start + 1, "last_step": trainer.step, "resumed_from": start, "step_s": step_s,
              "timed_steps": timed_steps, "peak_gib": peak, "peak_what": peak_what, "losses": losses,
              "precision": trainer.precision, "micro_batch": cfg.micro_batch}
    if hold_at is not None:
        trainer.save()
        (cfg.out / "worker1.json").write_text(json.dumps(report, indent=1))
        print(HOLD, flush=True)
        while True:  # the parent kills this process here, as a preemption or a node failure would
            time.sleep(60)
    val = DeviceImages(cfg.img_size, cfg.micro_batch, device, cfg.seed + 1)
    acc = accuracy(trainer.model, (val.batch_at(i) for i in range(cfg.eval_batches)), device, trainer.precision)
    report.update(top1=acc.top1, eval_images=acc.images)
    (cfg.out / "worker2.json").write_text(json.dumps(report, indent=1))


# ---- the parent: start, kill, restart, then the throughput rows and the table ---------------------

class OutOfMemory(RuntimeError):
    pass


def _worker_cmd(cfg: Config, hold_at: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--worker", "--device", cfg.device, "--steps", str(cfg.steps),
           "--micro-batch", str(cfg.micro_batch), "--img-size", str(cfg.img_size), "--out", str(cfg.out),
           "--eval-batches", str(cfg.eval_batches)]
    if cfg.compile:
        cmd.append("--compile")
    return cmd + (["--hold-at", str(hold_at)] if hold_at is not None else [])


def _run_worker(cfg: Config, hold_at: int | None, timeout_s: float) -> None:
    """Run one worker, echoing its lines; with hold_at, SIGKILL it once it holds at its checkpoint."""
    proc = subprocess.Popen(_worker_cmd(cfg, hold_at), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    timed_out = threading.Event()

    def kill_late() -> None:  # a hung worker prints nothing: kill it on a clock
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout_s, kill_late)
    watchdog.start()
    tail, held = [], False
    try:
        for line in proc.stdout:
            print("  " + line.rstrip(), flush=True)
            tail = (tail + [line])[-40:]
            if hold_at is not None and line.strip() == HOLD:
                proc.send_signal(signal.SIGKILL)
                held = True
                break
        proc.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise TimeoutError(f"worker killed after --timeout-s {timeout_s:.0f} s:\n{''.join(tail)}")
    if held:
        print(f"  [smoke] worker SIGKILLed at step {hold_at}, its checkpoint on disk", flush=True)
        return
    out = "".join(tail)
    if "OutOfMemoryError" in out:
        raise OutOfMemory(out)
    if proc.returncode != 0 or hold_at is not None:
        raise RuntimeError(f"worker exited with {proc.returncode} before it finished:\n{out}")


def train_kill_resume(cfg: Config, timeout_s: float) -> tuple[Config, dict, dict]:
    """Worker 1 to kill_at, SIGKILL, worker 2 resumes to the end. On a CUDA out-of-memory error
    the micro-batch is halved and the whole sequence starts again."""
    while True:
        cfg.out.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoint.pt", "worker1.json", "worker2.json"):
            (cfg.out / name).unlink(missing_ok=True)
        try:
            _run_worker(cfg, cfg.kill_at, timeout_s)
            _run_worker(cfg, None, timeout_s)
            break
        except OutOfMemory:
            if cfg.micro_batch <= 2:  # Mixup/CutMix pairs images: 2 is the least
                raise
            print(f"[smoke] micro-batch {cfg.micro_batch} does not fit on {cfg.device}: trying "
                  f"{cfg.micro_batch // 2}", flush=True)
            cfg.micro_batch //= 2
    first = json.loads((cfg.out / "worker1.json").read_text())
    second = json.loads((cfg.out / "worker2.json").read_text())
    if (second["resumed_from"], second["first_step"], second["last_step"]) != (cfg.kill_at, cfg.kill_at + 1, cfg.steps):
        raise RuntimeError(f"the resumed worker did not continue from the killed one's checkpoint at step "
                           f"{cfg.kill_at}: it started at step {second['first_step']} (resumed from "
                           f"{second['resumed_from']}) and ended at {second['last_step']} of {cfg.steps}")
    return cfg, first, second


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS:
            if key in name:
                return tflops, f"{name}, dense bf16 data-sheet peak"
        return None, f"{name} is not in GPU_PEAK_TFLOPS: pass --peak-tflops"
    return None, "no peak known for a CPU: pass --peak-tflops"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--micro-batch", type=int, help=f"default: the paper's per-GPU batch "
                    f"(train.paper.batch_size / {PAPER_GPUS}) on a GPU, 2 on a CPU")
    ap.add_argument("--img-size", type=int, help=f"default: params.yaml's train.runs.{RUN}.img_size")
    ap.add_argument("--kill-at", type=int, help="the step the first worker is killed after (default: half way)")
    ap.add_argument("--eval-batches", type=int, help="held-out batches to evaluate (default 8 on a GPU, 1 on a CPU)")
    ap.add_argument("--throughput-batch", type=int, help="default: params.yaml's train.paper.throughput_batch "
                    "on a GPU, 2 on a CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student's forward")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for the FLOP utilisation")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_smoke")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hold-at", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timeout-s", type=float, default=1800, help="per worker process")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    recipe, run_cfg = paper_recipe()
    cfg = Config(device=args.device, steps=args.steps,
                 micro_batch=args.micro_batch or (recipe["batch_size"] // PAPER_GPUS if gpu else 2),
                 img_size=args.img_size or run_cfg["img_size"], kill_at=args.kill_at if args.kill_at is not None else args.steps // 2,
                 out=args.out.resolve(), eval_batches=args.eval_batches or (8 if gpu else 1),
                 throughput_batch=args.throughput_batch or (recipe["throughput_batch"] if gpu else 2),
                 compile=args.compile)
    if not 0 < cfg.kill_at < cfg.steps:
        raise SystemExit(f"--kill-at {cfg.kill_at}: the kill must fall between step 1 and step {cfg.steps - 1} "
                         f"(--steps {cfg.steps} needs at least 2)")
    if args.worker:
        worker(cfg, args.hold_at)
        return
    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here (use --device cpu)")
    run(cfg, args.peak_tflops, args.timeout_s)


def run(cfg: Config, peak_given: float | None, timeout_s: float) -> dict:
    """Train, kill and resume, then time inference, print the tables; returns what result.json holds."""
    t0 = time.perf_counter()
    asked = cfg.micro_batch
    cfg, first, second = train_kill_resume(cfg, timeout_s)
    wall_s = time.perf_counter() - t0
    device = torch.device(cfg.device)
    arch = paper_recipe()[1]["model"]
    macs, macs_source = gmacs(timm.create_model(arch, img_size=cfg.img_size), arch, cfg.img_size)
    peak, peak_source = peak_tflops(device, peak_given)
    step_flops = 4 * 2 * macs * 1e9 * cfg.micro_batch if macs else None
    mfu = step_flops / second["step_s"] / (peak * 1e12) if step_flops and peak else None

    precisions = ["fp32", "bf16"] if bf16_native(device) else ["fp32"]
    gpu = device.type == "cuda"
    timed = time_models([(name, res) for name, res, _ in THROUGHPUT_MODELS], ["fast"], precisions, device,
                        cfg.throughput_batch, warmup=2 if gpu else 1, repeats=5 if gpu else 1)
    paper = paper_throughput()
    ref = next(t for t in timed if t.name == "pvt_v2_b2")

    where = torch.cuda.get_device_name(device) if gpu else "CPU"
    fitted = f" (asked {asked}, halved until it fitted)" if asked != cfg.micro_batch else ""
    losses = second["losses"]
    lines = [
        f"\nGPU smoke: {arch}@{cfg.img_size} on {where}, torch {torch.__version__}, timm {timm.__version__}, "
        f"{second['precision']}, micro-batch {cfg.micro_batch}{fitted}, {cfg.steps} steps; the first worker was "
        f"SIGKILLed after step {cfg.kill_at}, the second resumed from its checkpoint at step {second['first_step']}",
        "", "| training step (plain PyTorch, the resumed worker) | value |", "| --- | ---: |",
        f"| step time (mean of {second['timed_steps']} steps after warm-up) | {second['step_s']:.3f} s |",
        f"| images/s | {cfg.micro_batch / second['step_s']:.3g} |",
        f"| {second['peak_what']} | {second['peak_gib']:.2f} GiB |",
        "| model FLOP utilisation | " + (f"{100 * mfu:.1f} %" if mfu is not None else "n/a") + " |",
        f"| loss at steps {', '.join(losses)} | " + ", ".join(f"{v:.3f}" for v in losses.values()) + " |",
        f"| Top-1, {second['eval_images']} held-out synthetic images, {SYNTHETIC_CLASSES} classes | "
        f"{second['top1']:.1f} % |",
        f"| wall time, both workers (start-up, training, checkpoint, evaluation) | {wall_s:.0f} s |",
        "", f"FLOPs per step: 4 passes x 2 x {f'{macs:.2f}' if macs else '?'} GMACs x {cfg.micro_batch} images ({macs_source}); peak "
        f"{peak or '?'} TFLOP/s ({peak_source}). The killed worker's step time: {first['step_s']:.3f} s "
        f"({first['timed_steps']} steps).",
        "", f"| inference, fast path, batch {cfg.throughput_batch} | "
        + " | ".join(f"{p} img/s | {p} ratio to PVTv2-B2" for p in precisions)
        + " | paper (V100) img/s | paper ratio |", "| --- |" + " ---: |" * (2 * len(precisions) + 2)]
    for t in timed:
        theirs = paper[(t.name, t.res)]
        cells = [f"{t.ips[('fast', p)]:.3g} | {t.ips[('fast', p)] / ref.ips[('fast', p)]:.2f}" for p in precisions]
        lines.append(f"| {t.name}@{t.res} | " + " | ".join(cells)
                     + f" | {theirs} | {theirs / paper[('pvt_v2_b2', 224)]:.2f} |")
    print("\n".join(lines), flush=True)
    result = {"config": {**asdict(cfg), "out": str(cfg.out)}, "worker1": first, "worker2": second, "gmacs": macs,
              "gmacs_source": macs_source, "peak_tflops": peak, "mfu": mfu,
              "throughput": {f"{t.name}@{t.res}": {p: t.ips[("fast", p)] for p in precisions} for t in timed}}
    (cfg.out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
