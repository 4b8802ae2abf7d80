"""convert_imagenet under the real DVC, in a temporary copy of the repo, run through the launcher:
killed mid-way and rerun, it resumes from its checkpoints and its betons equal an uninterrupted
conversion's, with the local launcher (the whole process group killed, as a closed terminal
does) and as a SLURM job on the local cluster (the job's processes killed)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kill import sigkill_once_exists, wait_for
from tests.repo_copy import DVC, copy_repo, repo_env, run

pytestmark = [pytest.mark.dvc, pytest.mark.slow]
STAGE = "convert_imagenet"
# the first checkpoint of the train split's last beton (the writers checkpoint in max-side order:
# r256's state alone would let a kill land before r512 has one, and the rerun start at image 0)
MARKER = Path("outputs/checkpoints/convert_imagenet/r512/.train.beton.state.json")


def files_of(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    def small(p):
        # large enough images that the conversion takes seconds after its first checkpoint
        p["data"]["builtin"].update(num_classes=3, train_per_class=24, val_per_class=4, v2_per_class=2,
                                    min_side=320, max_side=448)
        p["data"]["convert"].update(max_sides=[256, 512], num_workers=1, chunk_size=3, checkpoint_every_s=0)

    tmp = tmp_path_factory.mktemp("convert")
    env = repo_env(SHELL="/bin/bash", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")
    root = copy_repo(tmp / "repo", small)
    run([DVC, "repro", "prepare_data"], root, env)

    # the uninterrupted conversion, in this process, of the sources as the stage names them
    from pipeline.config import load_params
    from pipeline.data.convert import convert
    from pipeline.data.sources import Sources

    record = json.loads((root / "data/source/source.json").read_text())
    here = os.getcwd()
    os.chdir(root)
    try:
        convert(Sources(Path(record["train"]), Path(record["val"]), Path(record["v2"])), tmp / "whole",
                load_params(root / "params.yaml").data.convert, log=lambda m: None)
    finally:
        os.chdir(here)
    return root, env, files_of(tmp / "whole")


def _set_launcher(root: Path, **launch) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["launch"].update(launch)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _resumed_and_equal(root: Path, out: str, whole: dict) -> dict:
    assert "[convert] train: resuming at image" in out, out
    assert files_of(root / "data/ffcv") == whole
    assert not (root / "outputs/checkpoints" / STAGE).exists()  # the work folder goes once the manifest is out
    metrics = json.loads((root / "metrics" / f"{STAGE}.json").read_text())
    assert metrics["resumed_images"] > 0 and metrics["images_per_s"] > 0 and metrics["train_images"] == 72
    return metrics


def test_local_launcher_killed_then_resumed(repo):
    root, env, whole = repo
    _set_launcher(root, launcher="local", profile=None)
    victim = subprocess.Popen([DVC, "repro", "-f", "-s", STAGE], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sigkill_once_exists(victim, root / MARKER, timeout_s=600, group=True)  # dvc, the stage and its job
    assert not (root / "data/ffcv/manifest.json").exists()

    out = run([DVC, "repro", "-s", STAGE], root, env)
    assert f"Running stage '{STAGE}'" in out
    assert _resumed_and_equal(root, out, whole)["workers"] == 1  # data.convert.num_workers


def _sigkill_job(job: str) -> None:
    """SIGKILL every process of the job on this node, as a node failure would: `scancel` cancels
    (SIGTERM, which submitit ignores, then SIGKILL after KillWait)."""
    listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines()[1:]:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slurm
def test_slurm_job_killed_then_resumed(repo):
    """`dvc repro convert_imagenet` with launcher slurm submits a job of the profile's conversion
    kind; its decoding processes are the allocation's cpus_per_task (2 in slurm/profiles/local.yaml)."""
    root, env, whole = repo
    _set_launcher(root, launcher="slurm", profile="local")
    victim = subprocess.Popen([DVC, "repro", "-f", "-s", STAGE], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    wait_for(victim, root / MARKER, timeout_s=600)
    job = json.loads((root / "outputs/slurm/jobs" / f"{STAGE}.json").read_text())["job_id"]
    _sigkill_job(job)
    log, _ = victim.communicate(timeout=300)
    assert victim.returncode != 0 and f"SLURM job {job} ended" in log, log  # dvc repro says the job died
    assert not (root / "data/ffcv/manifest.json").exists()

    out = run([DVC, "repro", "-s", STAGE], root, env)
    assert re.search(r"\[slurm\] submitted job (\d+)", out).group(1) != job  # a new job, resuming the killed one's work
    assert _resumed_and_equal(root, out, whole)["workers"] == 2
