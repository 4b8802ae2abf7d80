"""The paper's Fig. 6 (Top-1 against GFLOPs, throughput and parameters: Table 2's rows and ours)
and Fig. 1 (GFLOPs and latency against input resolution for HIRI-ViT and Swin, measured here)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; the stage runs headless
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.tracking.paper_tables import PaperTable  # noqa: E402

from .ours import OurRun  # noqa: E402

FIG6_AXES = (("gflops", "GFLOPs"), ("throughput", "throughput (images/s)"), ("params_m", "parameters (M)"))


def fig6(table2: PaperTable, ours: dict[str, OurRun], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(FIG6_AXES), figsize=(16, 5))
    for ax, (key, label) in zip(axes, FIG6_AXES):
        base = [r for r in table2.rows if not r.is_hiri and r.values.get(key) and r.values.get("top1")]
        ax.scatter([r.values[key] for r in base], [r.values["top1"] for r in base], s=14, c="0.6",
                   label="paper: baselines (Table 2)")
        for size, colour in (("S", "C0"), ("B", "C1"), ("L", "C2")):
            hiri = sorted((r for r in table2.rows if r.network == f"HIRI-ViT-{size}" and r.values.get(key)),
                          key=lambda r: r.res)
            ax.plot([r.values[key] for r in hiri], [r.values["top1"] for r in hiri], "o-", c=colour,
                    label=f"paper: HIRI-ViT-{size} (224/384/448)")
        mine = [(s, r) for s, r in sorted(ours.items()) if r.metrics.get(key) and r.metrics.get("top1") is not None]
        if mine:
            ax.scatter([r.metrics[key] for _, r in mine], [r.metrics["top1"] for _, r in mine], marker="*", s=160,
                       c="red", zorder=5, label="ours (metrics/*.json)")
            for s, r in mine:
                ax.annotate(s, (r.metrics[key], r.metrics["top1"]), fontsize=7, xytext=(4, -10),
                            textcoords="offset points")
        ax.set_xlabel(label + (" - ours measured on this machine" if key == "throughput" else ""))
        ax.set_ylabel("ImageNet-1K Top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fig. 6: accuracy against computational cost (paper: Table 2, V100 throughput)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure_latency(model, img_size: int, warmup: int, repeats: int) -> float:
    """Median wall time (ms) of one forward pass, batch 1, no grad."""
    import torch

    x = torch.randn(1, 3, img_size, img_size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def fig1_measure(cfg) -> list[dict]:
    """GFLOPs (fvcore, multiply-adds) and CPU latency per (model, resolution) on this machine."""
    import timm
    import torch

    import pipeline.models  # noqa: F401  (registers hiri_vit_*)
    from pipeline.models.flops import count_gflops

    torch.set_num_threads(cfg.threads)
    points = []
    plan = [(cfg.hiri_model, r, {}) for r in cfg.hiri_resolutions]
    plan += [(cfg.swin_model, r, {"img_size": r, "window_size": cfg.swin_window[r]}) for r in cfg.swin_resolutions]
    for name, res, kwargs in plan:
        model = timm.create_model(name, img_size=res, **{k: v for k, v in kwargs.items() if k != "img_size"}).eval()
        gflops = count_gflops(model, res)
        latency = measure_latency(model, res, cfg.warmup, cfg.repeats)
        points.append({"model": name, "res": res, "gflops": round(gflops, 3), "latency_ms": round(latency, 2)})
        print(f"  fig1: {name} @ {res}: {gflops:.2f} GFLOPs, {latency:.1f} ms", flush=True)
        del model
    return points


def fig1(points: list[dict], paper_points: list[dict], threads: int, path: Path) -> Path:
    fig, (ax_g, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(dict.fromkeys(p["model"] for p in points)):
        mine = [p for p in points if p["model"] == name]
        ax_g.plot([p["res"] for p in mine], [p["gflops"] for p in mine], "o-", c=f"C{i}", label=f"{name} (ours)")
        ax_t.plot([p["res"] for p in mine], [p["latency_ms"] for p in mine], "o-", c=f"C{i}", label=f"{name} (ours)")
    for j, name in enumerate(dict.fromkeys(p["network"] for p in paper_points)):
        theirs = [p for p in paper_points if p["network"] == name]
        ax_g.plot([p["res"] for p in theirs], [p["gflops"] for p in theirs], "s--", mfc="none", c=f"C{j + 4}",
                  label=f"{name} (paper, Section 1)")
    ax_g.set_title("GFLOPs against input resolution")
    ax_t.set_title(f"latency, batch 1, CPU with {threads} thread(s), this machine")
    for ax, ylabel in ((ax_g, "GFLOPs"), (ax_t, "latency (ms)")):
        ax.set_xlabel("input resolution")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 1: cost against input resolution (paper's latencies are GPU: "
                 + ", ".join(f"{p['network']}@{p['res']} {p['latency_ms']} ms" for p in paper_points) + ")",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
