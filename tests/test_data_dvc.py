"""DVC end to end, in a temporary copy of the repo: the data stages rerun exactly when they must."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import copy_repo, repo_env, run

pytestmark = pytest.mark.dvc


@pytest.fixture()
def repo_copy(tmp_path):
    def tiny(params):
        params["data"]["builtin"].update(num_classes=3, train_per_class=3, val_per_class=2, v2_per_class=1,
                                         min_side=64, max_side=96)
        params["data"]["convert"]["max_sides"] = [64]

    env = repo_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return copy_repo(tmp_path / "repo", tiny), env


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
