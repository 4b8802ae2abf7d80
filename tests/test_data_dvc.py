"""DVC end to end, in a temporary copy of the repo: the data stages rerun exactly when they must."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.dvc


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture()
def repo_copy(tmp_path):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    dst = tmp_path / "repo"
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["data"]["builtin"].update(num_classes=3, train_per_class=3, val_per_class=2, v2_per_class=1,
                                     min_side=64, max_side=96)
    params["data"]["convert"]["max_sides"] = [64]
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run(["git", "init", "-q"], dst, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-q", "-m", "copy"], dst, env)
    return dst, env


def test_repro_convert_twice_then_a_conversion_param(repo_copy):
    repo, env = repo_copy
    dvc = [str(Path(sys.executable).parent / "dvc")]
    out = run(dvc + ["repro", "convert_imagenet"], repo, env)
    assert "Running stage 'prepare_data'" in out and "Running stage 'convert_imagenet'" in out
    manifest = yaml.safe_load((repo / "data/ffcv/manifest.json").read_text())
    assert manifest["splits"]["train"]["images"] == 9 and (repo / "data/ffcv/r64/v2.beton").is_file()
    assert (repo / "metrics/convert_imagenet.json").is_file()

    out = run(dvc + ["repro", "convert_imagenet"], repo, env)
    assert "Running stage" not in out  # nothing changed, nothing ran

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["convert"]["jpeg_quality"] = 80
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(dvc + ["repro", "convert_imagenet"], repo, env)
    assert "Running stage 'convert_imagenet'" in out and "Running stage 'prepare_data'" not in out

    params["data"]["loader"]["re_prob"] = 0.1  # read by training only: no data stage reruns
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(dvc + ["repro", "convert_imagenet"], repo, env)
    assert "Running stage" not in out
