"""`python -m pipeline.launch` against the real local SLURM, in a temporary copy of the repo."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from submitit.core.utils import pickle_load

from tests.repo_copy import DVC, commit_all, copy_repo, edit_params_file, repo_env, run

pytestmark = [pytest.mark.slurm, pytest.mark.dvc]


def _queue(fmt: str = "%i %j") -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", fmt], capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory):
    """A copy of the checkout with the built-in betons made in it, shared by this module's tests.
    The set is small (what is tested is submission and attachment, not learning): 5 steps of 16 per
    epoch, 20 val and 10 V2 images, small pictures; each job's evaluation passes take seconds."""
    def small_data(p):
        p["data"]["builtin"].update(train_per_class=8, val_per_class=2, v2_per_class=1, min_side=96, max_side=128)

    dst = copy_repo(tmp_path_factory.mktemp("launch") / "repo", small_data, skip=("metrics/", "plots/", "reports/"))
    run([DVC, "repro", "convert_imagenet"], dst, repo_env())
    return dst


@pytest.fixture
def repo(base_repo, tmp_path):
    dst = tmp_path / "repo"
    # the betons (~1 GB) are hard links, not copies: no test here rewrites them
    shutil.copytree(base_repo, dst, symlinks=True, copy_function=_link_data(base_repo))
    edit_params_file(dst, lambda p: p["launch"].update(launcher="slurm"))
    commit_all(dst)
    yield dst
    ids = [line.split()[0] for line in _queue()]
    mine = [i for i in ids if (dst / "outputs" / "slurm" / "jobs").exists()
            and any(i in p.read_text() for p in (dst / "outputs" / "slurm" / "jobs").glob("*.json"))]
    if mine:
        subprocess.run(["scancel", *mine], check=False)


def _link_data(base: Path):
    data = base / "data"

    def copy(src, dst):
        if Path(src).is_relative_to(data):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)
    return copy


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


def test_finetune_chained_behind_its_448_stage_in_one_launch(repo):
    before = _queue()
    out = _launch(repo, "finetune_hiri_s_768")
    assert out.returncode == 0, out.stderr
    train_id = re.search(r"train_hiri_s_448: submitted job (\d+)", out.stdout).group(1)
    ft = re.search(r"finetune_hiri_s_768: submitted job (\d+) \(after (\d+)\)", out.stdout)
    assert ft and ft.group(2) == train_id, out.stdout
    deps = {line.split()[0]: line.split()[1] for line in _queue("%i %E") if line not in before}
    assert deps[ft.group(1)].startswith(f"afterok:{train_id}"), deps
    # the fine-tune job starts from the weights the 448 job stages, before dvc repro collects them
    rec = json.loads((repo / "outputs" / "slurm" / "jobs" / "train_hiri_s_448.json").read_text())
    spec = pickle_load(next(Path(repo / "outputs" / "submitit" / "finetune_hiri_s_768").glob(
        f"{ft.group(1)}_submitted.pkl"))).args[0]
    assert spec.init_weights == Path(rec["staged"]) / "out" / "model.pt"


def test_table_sweep_submits_one_job_per_row(repo):
    """`--table 8`: Table 8's three ablation stages and train_hiri_s_448 (its HIRI-ViT-S row), one
    SLURM job each, side by side (tests/test_launch_sweep.py: only the stale ones, the plan)."""
    rows = ["ablation_t8_hr_hr_hr_hr_t", "ablation_t8_hr_hr_hr_t_t", "ablation_t8_hr_hr_t_t_t", "train_hiri_s_448"]
    before = _queue()
    out = _launch(repo, "--table", "8")
    assert out.returncode == 0, out.stderr
    assert sorted(line.split()[1] for line in _queue() if line not in before) == rows
    assert "then: dvc repro " + " ".join(rows) in out.stdout and "(after" not in out.stdout


def _shorten(repo: Path) -> None:
    """The built-in schedule cut to one epoch of 3 steps of 4: the whole path, in a minute or two."""
    short = dict(max_steps_per_epoch=3, epochs=1, batch_size=4, micro_batch_size=4, throughput_batch=1)
    edit_params_file(repo, lambda p: p["train"]["builtin"].update(short))


@pytest.mark.slow
def test_launch_then_dvc_repro_attaches_to_both_jobs_to_completion(repo):
    """The acceptance path at a smaller scale: two independent stages submitted at once, both in
    squeue; `dvc repro` of both attaches to both jobs, submits nothing, collects their outputs;
    each MLflow run carries its SLURM job id; a second `dvc repro` finds both up to date.
    (`dvc repro` submitting a job itself: test_failed_job_shows_its_stderr..., and the README run.)"""
    _shorten(repo)
    out = _launch(repo, "train_hiri_s_224", "train_hiri_b_224")
    assert out.returncode == 0, out.stderr
    ids = dict(re.findall(r"(train_hiri_\w+): submitted job (\d+)", out.stdout))
    assert set(ids) == {"train_hiri_s_224", "train_hiri_b_224"}, out.stdout
    assert set(ids.values()) <= {line.split()[0] for line in _queue()}
    rep = subprocess.run([DVC, "repro", "train_hiri_s_224", "train_hiri_b_224"], cwd=repo, capture_output=True,
                         text=True, timeout=1200)
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-4000:]
    attached = dict(re.findall(r"\[slurm\] attached to job (\d+) for (train_hiri_\w+)", rep.stdout))
    assert attached == {job: stage for stage, job in ids.items()}, rep.stdout
    assert "[slurm] submitted" not in rep.stdout
    assert "epoch 1/1 done" in rep.stdout  # the jobs' progress lines reach the dvc repro output
    for stage in ids:
        assert json.loads((repo / "metrics" / f"{stage}.json").read_text())["top1"] is not None
        assert (repo / "outputs" / stage / "model.pt").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("table2-imagenet").experiment_id])
    ours = [r for r in runs if r.data.tags.get("source") != "paper"]  # each stage logs its paper row beside it
    assert sorted(r.data.tags.get("slurm_job_id") for r in ours) == sorted(ids.values())
    assert len(runs) == 2 * len(ours)
    again = subprocess.run([DVC, "repro", "train_hiri_s_224", "train_hiri_b_224"], cwd=repo, capture_output=True,
                           text=True)
    assert again.returncode == 0 and "[slurm]" not in again.stdout, again.stdout


def test_failed_job_shows_its_stderr_in_the_stage_error_and_is_resubmitted(repo):
    prof = repo / "slurm" / "profiles" / "local.yaml"
    prof.write_text(prof.read_text().replace("    - export DS_ACCELERATOR=cpu",
                                             "    - \"echo 'module load: no such module' >&2\"\n    - exit 3"))
    out = subprocess.run([DVC, "repro", "train_hiri_s_224"], cwd=repo, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert re.search(r"error: train_hiri_s_224: SLURM job \d+ ended FAILED", text), text[-3000:]
    assert "ExitCode 3" in text and "module load: no such module" in text and "Traceback" not in text, text[-3000:]
    assert not (repo / "outputs" / "slurm" / "jobs" / "train_hiri_s_224.json").exists()  # next repro submits afresh
