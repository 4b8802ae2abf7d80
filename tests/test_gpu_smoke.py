"""bench/gpu_smoke.py end to end on the CPU, as the lent GPU machines would run it: without the
packages they lack (each blocked by a stub that fails to import), so that the GPU run is not the
script's first; and the multiply-add counts it falls back on there, held to fvcore's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the GPU machines do not have (torch, torchvision, timm, numpy and pyyaml they do)
ABSENT = ("deepspeed", "ffcv", "dvc", "mlflow", "submitit", "fvcore", "pydantic", "rich")


def _blocking_path(root: Path) -> Path:
    for name in ABSENT:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on a GPU machine')\n")
    return root


@pytest.mark.slow
def test_cpu_run_end_to_end_without_the_packages_a_gpu_machine_lacks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(_blocking_path(tmp_path / "absent"))}
    out_dir = tmp_path / "smoke"
    res = subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--device", "cpu", "--steps", "3", "--out",
                          str(out_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    # the first worker was killed holding its step-1 checkpoint; the second continued from it
    assert "worker SIGKILLed at step 1" in out and "resumed at step 1, training to step 3" in out, out
    result = json.loads((out_dir / "result.json").read_text())
    second = result["worker2"]
    assert (second["resumed_from"], second["first_step"], second["last_step"]) == (1, 2, 3)
    assert second["step_s"] > 0 and 0 <= second["top1"] <= 100 and second["eval_images"] == 2
    assert result["gmacs_source"].startswith("fvcore count cached") and result["gmacs"] == pytest.approx(5.02, abs=0.01)
    assert set(result["throughput"]) == {"hiri_vit_s@448", "pvt_v2_b2@224", "swin_tiny_patch4_window7_224@224"}
    assert "| hiri_vit_s@448 |" in out and "| 1490 | 1.15 |" in out  # the paper's V100 row and ratio beside ours


@pytest.mark.slow
def test_cached_multiply_adds_are_fvcores():
    import timm

    import pipeline.models  # noqa: F401
    from bench.macs import CACHED_GMACS
    from pipeline.models.flops import count_gflops

    for (name, res), cached in CACHED_GMACS.items():
        model = timm.create_model(name, **({"img_size": res} if name.startswith("hiri") else {}))
        assert count_gflops(model, res) == pytest.approx(cached, abs=1e-4), f"{name}@{res}: run python bench/macs.py"
