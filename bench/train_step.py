"""Training-step benchmark: our DeepSpeed step against a plain PyTorch AdamW step, and ZeRO-2's
memory per rank against plain data parallel (DDP) with 2 processes.

Speed (1 process): the same model, batch, threads, precision and optimiser (torch AdamW with
timm's parameter groups, gradient clipping at the recipe's norm) as `loss.backward(); clip;
opt.step()` in PyTorch's default NCHW layout and in channels_last, and through
`pipeline.train.engine.build_engine` with the loop's batch layout (`to_memory_format`): as the
training loop runs one rank (ZeRO off, there is nothing to partition) and with ZeRO-2 forced on
that rank. The forward runs under the loop's autocast (`--precision`, default what the loop
picks on this machine: bf16 where the CPU has native bf16, else fp32). All are interleaved in
rounds and each reports its median step time, so drift on a shared machine hits them alike.

Memory (2 processes through pipeline.launch, gloo): per rank, the bytes of optimiser state the
rank holds (AdamW's exp_avg / exp_avg_sq, plus ZeRO's fp32 partition of the weights) and the
process's peak RSS, for ZeRO-2 and for torch DDP + AdamW.

    python bench/train_step.py                      # hiri_vit_s at 224, batch 16, the README table
    python bench/train_step.py --model hiri_vit_s --img-size 448 --batch 16 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402


def _model(name: str, img_size: int):
    import timm

    import pipeline.models  # noqa: F401

    torch.manual_seed(0)
    return timm.create_model(name, img_size=img_size, num_classes=1000)


def _recipe(global_batch: int, micro_batch: int):
    from pipeline.config import RecipeParams

    return RecipeParams(batch_size=global_batch, micro_batch_size=micro_batch, lr=1e-3, lr_reference_batch=global_batch,
                        zero_stage=2, precision="fp32")


def _single_rank_env(port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def speed(args) -> dict:
    from pipeline.train.engine import (MEMORY_FORMAT, batch_layout, build_engine, build_optimizer,
                                       init_distributed, to_memory_format)
    from pipeline.train.evaluate import autocast

    torch.set_num_threads(args.threads)
    _single_rank_env(29600 + os.getpid() % 1000)
    cpu = torch.device("cpu")
    init_distributed(cpu)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    recipe = _recipe(args.batch, args.batch)

    def loss_of(model, batch):
        with autocast(cpu, args.precision):
            logits = model(batch)
        return torch.nn.functional.cross_entropy(logits.float(), y)

    def plain_step_for(memory_format):
        model = _model(args.model, args.img_size).train().to(memory_format=memory_format)
        opt = build_optimizer(model, recipe)
        batch = x.contiguous(memory_format=memory_format)

        def plain_step():
            loss = loss_of(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            opt.step()

        return plain_step

    def ds_step_for(stage):
        engine, _ = build_engine(_model(args.model, args.img_size).train(), recipe, batch_layout(recipe, 1),
                                 cpu, args.precision, stage=stage)
        batch = to_memory_format(x)  # as the loop hands batches over

        def ds_step():
            engine.backward(loss_of(engine, batch))
            engine.step()

        return ds_step

    # "deepspeed": what the training loop runs on one rank (ZeRO off: nothing to partition);
    # "zero2_1rank": ZeRO-2 forced on that one rank, to show what partitioning costs there.
    steps = {"plain": plain_step_for(torch.contiguous_format), "plain_cl": plain_step_for(MEMORY_FORMAT),
             "deepspeed": ds_step_for(None), "zero2_1rank": ds_step_for(2)}
    times = {k: [] for k in steps}
    for fn in steps.values():  # warm-up (allocations, oneDNN primitive caches)
        for _ in range(2):
            fn()
    for _ in range(args.rounds):
        for name, fn in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: args.batch / statistics.median(v) for k, v in times.items()}


def _optimizer_state_bytes(opt) -> int:
    seen, total = set(), 0
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO wrapper holds torch's AdamW
    for state in inner.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                total += v.numel() * v.element_size()
    for group in getattr(opt, "single_partition_of_fp32_groups", []):  # ZeRO's fp32 weight partition
        if group.data_ptr() not in seen:
            seen.add(group.data_ptr())
            total += group.numel() * group.element_size()
    return total


def memory_worker(mode: str, model_name: str, img_size: int, batch: int, steps: int) -> dict:
    """One rank of the memory comparison (run by submitit, 2 tasks)."""
    import torch.distributed as dist

    from pipeline.launch.local import distributed_env, share_cpu_threads
    from pipeline.train.engine import batch_layout, build_engine, build_optimizer, init_distributed

    env = distributed_env()
    share_cpu_threads(env["local_world_size"])
    init_distributed(torch.device("cpu"))
    model = _model(model_name, img_size).train()
    recipe = _recipe(batch * env["world_size"], batch)  # zero_stage 2 (effective: 2 ranks)
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.randint(0, 1000, (batch,))
    if mode == "zero2":
        engine, opt = build_engine(model, recipe, batch_layout(recipe, env["world_size"]), torch.device("cpu"), "fp32")
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(engine(x), y)
            engine.backward(loss)
            engine.step()
    else:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = build_optimizer(model, recipe)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            opt.step()
    out = {"rank": dist.get_rank(), "opt_state_mib": _optimizer_state_bytes(opt) / 2**20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, out)
    return gathered


def memory(args) -> dict:
    from pipeline.config import LaunchParams
    from pipeline.launch.local import run_local

    res = {}
    for mode in ("ddp", "zero2"):
        ranks = run_local(memory_worker, mode, args.model, args.img_size, args.mem_batch, 2,
                          launch=LaunchParams(tasks=2, timeout_min=60), folder=Path(args.folder) / mode,
                          name=f"bench-{mode}", echo=open(os.devnull, "w"))
        res[mode] = {"opt_state_mib": max(r["opt_state_mib"] for r in ranks),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hiri_vit_s")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)  # the built-in recipe's batch
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="autocast of the forward, as the loop resolves it (auto: bf16 where the CPU has it)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--mem-batch", type=int, default=2, help="per-rank batch of the memory comparison")
    ap.add_argument("--folder", default="outputs/bench_train_step")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    from pipeline.train.engine import resolve_precision

    args.precision = resolve_precision(args.precision, torch.device("cpu"))
    s = speed(args)
    print(f"\n{args.model} @ {args.img_size}, batch {args.batch}, {args.threads} threads, {args.precision}, "
          f"{args.rounds} rounds x {args.steps} steps (median step time)\n")
    print("| step | images/s | vs plain PyTorch |")
    print("| --- | ---: | ---: |")
    for key, label in (("plain", "plain PyTorch AdamW (NCHW)"), ("plain_cl", "plain PyTorch AdamW, channels_last"),
                       ("deepspeed", "DeepSpeed, as the loop runs 1 rank (channels_last, ZeRO off)"),
                       ("zero2_1rank", "DeepSpeed ZeRO-2 forced on 1 rank")):
        print(f"| {label} | {s[key]:.2f} | {s[key] / s['plain']:.2f} |")
    if args.skip_memory:
        return
    m = memory(args)
    print(f"\n2 processes (gloo), batch {args.mem_batch} per rank, max over ranks\n")
    print("| data parallel | optimizer state per rank (MiB) | peak RSS per rank (MiB) |")
    print("| --- | ---: | ---: |")
    print(f"| torch DDP + AdamW | {m['ddp']['opt_state_mib']:.0f} | {m['ddp']['peak_rss_mib']:.0f} |")
    print(f"| DeepSpeed ZeRO-2 | {m['zero2']['opt_state_mib']:.0f} | {m['zero2']['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
