"""`python -m pipeline.launch` against the real local SLURM, in a temporary copy of the repo."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.dvc]
REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def _queue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory):
    """A copy of the tracked tree with the built-in betons in place (made here when the checkout
    has none, as in CI's fresh clone), shared by the tests of this module."""
    dst = tmp_path_factory.mktemp("launch") / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    shutil.copytree(REPO / ".dvc", dst / ".dvc", dirs_exist_ok=True)
    if (REPO / "data" / "ffcv").is_dir():
        for d in ("data", "metrics"):
            shutil.copytree(REPO / d, dst / d, dirs_exist_ok=True)
        if (REPO / "dvc.lock").exists():
            shutil.copy2(REPO / "dvc.lock", dst / "dvc.lock")
    else:
        subprocess.run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm t", shell=True,
                       cwd=dst, check=True)
        subprocess.run([DVC, "repro", "convert_imagenet"], cwd=dst, check=True, capture_output=True)
        shutil.rmtree(dst / ".git")
    return dst


@pytest.fixture
def repo(base_repo, tmp_path):
    dst = tmp_path / "repo"
    shutil.copytree(base_repo, dst, symlinks=True)
    params = (dst / "params.yaml").read_text().replace("  launcher: local", "  launcher: slurm\n  profile: local")
    (dst / "params.yaml").write_text(params)
    subprocess.run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm t", shell=True,
                   cwd=dst, check=True)
    yield dst
    ids = [line.split()[0] for line in _queue()]
    mine = [i for i in ids if (dst / "outputs" / "slurm" / "jobs").exists()
            and any(i in p.read_text() for p in (dst / "outputs" / "slurm" / "jobs").glob("*.json"))]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def _launch(repo, *targets):
    return subprocess.run([sys.executable, "-m", "pipeline.launch", *targets], cwd=repo, capture_output=True, text=True)


def test_launch_submits_independent_stages_together_and_repro_attaches(repo):
    before = _queue()
    out = _launch(repo, "train_hiri_s_448", "train_hiri_s_224")
    assert out.returncode == 0, out.stderr
    new = [line for line in _queue() if line not in before]
    assert sorted(line.split()[1] for line in new) == ["train_hiri_s_224", "train_hiri_s_448"]
    again = _launch(repo, "train_hiri_s_448", "train_hiri_s_224")
    assert again.returncode == 0 and again.stdout.count("already submitted as job") == 2, again.stdout
    # dvc repro attaches to the running job (killed after it says so: the job must keep running)
    p = subprocess.Popen([DVC, "repro", "train_hiri_s_224"], cwd=repo, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seen = ""
    for line in p.stdout:
        seen += line
        if "[slurm]" in line:
            break
    p.kill()
    p.wait()
    assert "[slurm] attached to job" in seen, seen
    assert sorted(line for line in _queue() if line not in before) == sorted(new)  # nothing new submitted


def test_bad_partition_submits_nothing(repo):
    prof = repo / "slurm" / "profiles" / "local.yaml"
    prof.write_text(prof.read_text().replace("partition: debug", "partition: nope"))
    before = _queue()
    out = _launch(repo, "train_hiri_s_448", "train_hiri_s_224")
    assert out.returncode == 2 and "kinds.pretraining.partition: partition 'nope' does not exist" in out.stderr
    assert set(_queue()) <= set(before)  # no new job (earlier tests' cancelled jobs may leave the queue)
    assert not (repo / "outputs" / "slurm" / "jobs" / "train_hiri_s_448.json").exists()
