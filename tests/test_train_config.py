"""params.yaml's training sections: validation with clear errors, batch layout, schedule, precision."""

import pytest
import torch
import yaml

from pipeline.config import DEFAULT_PARAMS, ParamsError, RecipeParams, load_params
from pipeline.train.engine import BatchLayoutError, batch_layout, resolve_precision, scaled_lr
from pipeline.train.schedule import build_scheduler


def _write(tmp_path, raw):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT_PARAMS.read_text())


def test_repo_params_hold_the_paper_recipe(raw):
    p = load_params()
    paper = p.train.paper
    # Section 5.1: AdamW, 300 epochs, cosine with 5 warm-up epochs, batch 1024, lr 1e-3, wd 0.05
    assert (paper.epochs, paper.warmup_epochs, paper.batch_size, paper.lr, paper.weight_decay) == (300, 5, 1024, 1e-3, 0.05)
    assert scaled_lr(paper) == pytest.approx(1e-3)
    ft = p.finetune.paper  # Table 3 recipe: lr 1e-5, wd 1e-8, 30 epochs
    assert (ft.epochs, ft.lr, ft.weight_decay) == (30, 1e-5, 1e-8)
    assert p.profile == "builtin"
    expected = {f"hiri_{s}_{r}" for s in "sbl" for r in (224, 384, 448)}
    assert set(p.train.runs) == expected
    assert {r.init_from for r in p.finetune.runs.values()} == {"hiri_s_448", "hiri_b_448", "hiri_l_448"}


def test_unknown_key_is_named(tmp_path, raw):
    raw["train"]["builtin"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"train\.builtin\.epoch: Extra inputs are not permitted"):
        load_params(_write(tmp_path, raw))


def test_wrong_type_is_named(tmp_path, raw):
    raw["train"]["paper"]["lr"] = "fast"
    with pytest.raises(ParamsError, match=r"train\.paper\.lr: .*(got 'fast')"):
        load_params(_write(tmp_path, raw))


def test_unknown_profile_is_named(tmp_path, raw):
    raw["profile"] = "laptop"
    with pytest.raises(ParamsError, match=r"profile: .*'builtin' or 'paper'"):
        load_params(_write(tmp_path, raw))


def test_finetune_source_must_exist(tmp_path, raw):
    raw["finetune"]["runs"]["hiri_s_768"]["init_from"] = "hiri_s_999"
    with pytest.raises(ParamsError, match="finetune.runs.hiri_s_768.init_from: no train run 'hiri_s_999'"):
        load_params(_write(tmp_path, raw))


def test_batch_must_split_into_micro_batches(tmp_path, raw):
    raw["train"]["builtin"]["micro_batch_size"] = 5
    with pytest.raises(ParamsError, match="batch_size 16 is not a multiple of micro_batch_size 5"):
        load_params(_write(tmp_path, raw))


def test_batch_layout_over_ranks():
    r = RecipeParams(batch_size=1024, micro_batch_size=64)
    lay = batch_layout(r, 8)
    assert (lay.micro_batch, lay.accumulation, lay.world_size) == (64, 2, 8)
    with pytest.raises(BatchLayoutError, match="64 x 3 ranks = 192"):
        batch_layout(r, 3)


def test_micro_batch_is_derived_from_the_global_batch_unless_set():
    derived = RecipeParams(batch_size=1024)  # the paper profile: micro_batch_size null
    assert [(lay.micro_batch, lay.accumulation) for lay in (batch_layout(derived, 8), batch_layout(derived, 16))] \
        == [(128, 1), (64, 1)]
    with pytest.raises(BatchLayoutError, match="batch_size 1024 does not split over 12 ranks") as err:
        batch_layout(derived, 12)
    assert err.value.field == "batch_size"
    # an explicit micro-batch too large for the ranks: what 128 per GPU gave on 16 GPUs
    with pytest.raises(BatchLayoutError, match="128 x 16 ranks = 2048 images per step is more than batch_size 1024") \
            as err:
        batch_layout(RecipeParams(batch_size=1024, micro_batch_size=128), 16)
    assert err.value.field == "micro_batch_size"


def test_repo_paper_profile_runs_on_8_and_16_gpus():
    paper = load_params().train.paper
    assert paper.micro_batch_size is None and not paper.sync_bn
    assert batch_layout(paper, 16).micro_batch == 64 and batch_layout(paper, 8).micro_batch == 128


def test_loader_workers_follow_the_allocation(monkeypatch):
    from pipeline.config import LoaderParams

    assert LoaderParams(num_workers=3).workers() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert LoaderParams().workers() == 12  # auto: what SLURM gave the task
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert LoaderParams().workers() == 4  # this process's CPUs shared between the node's ranks
    with pytest.raises(ValueError, match="num_workers -1"):
        LoaderParams(num_workers=-1)


def test_linear_lr_scaling():
    assert scaled_lr(RecipeParams(batch_size=512, micro_batch_size=64)) == pytest.approx(5e-4)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    r = RecipeParams(epochs=10, warmup_epochs=2, warmup_lr=0.0, min_lr=0.0, batch_size=8, micro_batch_size=8)
    sched = build_scheduler(opt, r, steps_per_epoch=10, base_lr=1.0)
    lrs = []
    for step in range(101):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.0) and lrs[10] == pytest.approx(0.5) and lrs[20] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5, abs=1e-6)  # half-way through the 80 cosine steps
    assert lrs[100] == pytest.approx(0.0, abs=1e-6)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_precision_resolution():
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")


def test_stage_refuses_paper_profile_without_dataset_paths(tmp_path, raw, capsys):
    from stages.train import main

    raw["profile"] = "paper"
    assert main(["hiri_s_448", "--params", str(_write(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert "data.imagenet" in err and "data.imagenet_v2" in err


def test_stage_names_an_unknown_run(tmp_path, raw, capsys):
    from stages.train import main

    assert main(["hiri_x_448", "--params", str(_write(tmp_path, raw))]) == 2
    assert "no run 'hiri_x_448'" in capsys.readouterr().err
