"""The preflight: `python -m pipeline.launch --plan STAGE...` prints how a stage would run and
fails naming the field when its layout cannot work, needing neither a cluster nor converted data;
a SLURM stage runs the same check before it submits."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import slurm_profiles
from pipeline.launch import dag, slurm
from pipeline.launch.cluster import SubmissionError
from pipeline.train.stage import make_spec
from tests.repo_copy import REPO, copy_repo

GPU_EXAMPLE = REPO / "slurm" / "profiles" / "gpu_example.yaml"


def _profile(directory: Path, name: str, nodes: int, gpus_per_node: int) -> None:
    """A copy of gpu_example.yaml with the pretraining kind on `nodes` x `gpus_per_node`."""
    raw = yaml.safe_load(GPU_EXAMPLE.read_text())
    raw["kinds"]["pretraining"].update(nodes=nodes, gpus_per_node=gpus_per_node)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(raw))


def _paper_on_slurm(params: dict, profile: str) -> None:
    params["profile"] = "paper"
    params["launch"].update(launcher="slurm", profile=profile)


def test_plan_of_the_paper_on_two_nodes_of_eight_gpus(tmp_path):
    """The acceptance run, as a user would type it, on a machine without SLURM or data."""
    repo = copy_repo(tmp_path / "repo", lambda p: _paper_on_slurm(p, "gpu_2x8"), skip=("tests/",))
    _profile(repo / "slurm" / "profiles", "gpu_2x8", nodes=2, gpus_per_node=8)
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}  # no sinfo, no sbatch here
    out = subprocess.run([sys.executable, "-m", "pipeline.launch", "--plan", "train_hiri_l_448"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for expected in ("train_hiri_l_448: hiri_vit_l @ 448",
                     "2 node(s) x 8 tasks x 1 GPU each (8 GPUs per node) = world size 16 (NCCL)",
                     "global 1024 = micro-batch 64 (derived: batch_size / ranks) x accumulation 1 x 16 ranks",
                     "learning rate   0.001",
                     "1,251 per epoch (1,281,167 training images: ImageNet-1K's count (data.imagenet not set)) "
                     "x 300 epochs = 375,300",
                     "every 1,000 steps", "bf16 autocast over fp32 weights; ZeRO stage 2; BatchNorm per rank",
                     "memory per GPU", "ranks from      slurm/profiles/gpu_2x8.yaml: kinds.pretraining",
                     "live checks     skipped: the cluster did not answer (sinfo not found"):
        assert expected in text, text
    gib = float(text.split("memory per GPU  about ")[1].split(" GiB")[0])
    assert 5 < gib < 80, text  # HIRI-ViT-L at 448, 64 images: tens of GiB, not MiB or TiB
    assert not (repo / "outputs" / "slurm").exists()  # nothing submitted, nothing recorded


@pytest.fixture
def paper_root(tmp_path, monkeypatch):
    """A params.yaml of profile paper on SLURM profile `gpu_test`, profiles read from tmp_path."""
    profiles = tmp_path / "profiles"
    monkeypatch.setattr(slurm_profiles, "PROFILE_DIR", profiles)

    def make(nodes: int, gpus_per_node: int, **paper) -> Path:
        _profile(profiles, "gpu_test", nodes, gpus_per_node)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        _paper_on_slurm(params, "gpu_test")
        params["train"]["paper"].update(paper)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return tmp_path

    return make


@pytest.mark.parametrize("nodes, gpus, paper, field, message", [
    (2, 6, {}, "train.paper.batch_size", "batch_size 1024 does not split over 12 ranks"),
    (2, 8, {"micro_batch_size": 128}, "train.paper.micro_batch_size",
     "micro_batch_size 128 x 16 ranks = 2048 images per step is more than batch_size 1024"),
])
def test_a_layout_that_cannot_work_fails_naming_the_field(paper_root, nodes, gpus, paper, field, message):
    root = paper_root(nodes, gpus, **paper)
    with pytest.raises(SubmissionError, match=rf"train_hiri_l_448: {field}: {message}"):
        dag.plan(["train_hiri_l_448"], make_spec, root, echo=lambda _: None, live=False)


def test_a_slurm_stage_checks_its_plan_before_it_submits(paper_root, monkeypatch):
    """What `dvc repro` of a SLURM stage does (pipeline.launch.slurm.submit): the preflight first."""
    from pipeline.config import load_params

    root = paper_root(2, 8, micro_batch_size=128)
    spec = make_spec(load_params(root / "params.yaml"), "train", "hiri_l_448", repo_root=root)

    def no_submission(*args, **kwargs):
        raise AssertionError("an executor was made for a layout that cannot work")

    monkeypatch.setattr(slurm, "executor_for", no_submission)
    with pytest.raises(SubmissionError, match="train.paper.micro_batch_size"):
        slurm.submit(spec, key="k")
    assert not slurm.read_record(root, spec.stage)


def test_a_plan_names_stages_it_does_not_cover(paper_root):
    with pytest.raises(dag.LaunchPlanError, match="covers the training stages"):
        dag.plan(["convert_imagenet"], make_spec, paper_root(1, 8), echo=lambda _: None, live=False)


def test_a_transfer_stage_checks_its_layout_too():
    from pipeline.config import load_params
    from pipeline.transfer.run import TransferSpec

    here = Path(".")
    spec = TransferSpec(key="ade20k_upernet_hiri_s", params=load_params(REPO / "params.yaml"), repo_root=here,
                        data_root=here, out_dir=here, ckpt_dir=here, metrics_file=here, plots_file=here,
                        init_weights=here)
    assert spec.plan(nodes=1, tasks_per_node=1).lines() == [
        "ade20k_upernet_hiri_s: global batch 4 = micro-batch 4 x accumulation 1 x 1 ranks"]
    with pytest.raises(SubmissionError, match="transfer.segmentation.builtin.micro_batch_size: micro_batch_size 4 "
                                              "x 2 ranks = 8"):
        spec.plan(nodes=1, tasks_per_node=2)


@pytest.mark.parametrize("stage", ["ablation_t8_hr_hr_t_t_t", "ablation_t9_hrnet_w18"])
def test_an_ablation_row_is_planned_on_its_own_model(paper_root, stage):
    """`--table N` preflights every row: a block variant (its model factory's, not in timm's
    registry) and a timm backbone without stochastic depth (drop_path_rate null)."""
    lines = []
    dag.plan([stage], make_spec, paper_root(2, 8), echo=lines.append, live=False)
    text = "\n".join(lines)
    assert f"{stage}: " in text and "memory per GPU" in text, text
