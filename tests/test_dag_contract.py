"""dvc.yaml held against params.yaml and the code: a stage per run and back, fine-tunes chained to
their init_from stage, every declared param present and every knob either declared or left out on
purpose, code deps = the files the stage's entry module imports. Then, under the real DVC in a repo
copy: the knobs that change no result leave `dvc status` clean, and code edits make exactly the
stages that run that code stale."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import (ConvertParams, DetectionRecipe, LaunchParams, LoaderParams, RecipeParams,
                             SegmentationRecipe, load_params)
from pipeline.data.convert import SPEED_SETTINGS
from pipeline.launch.stagekey import load_stages, stage_key, upstream
from tests.repo_copy import DVC, REPO, copy_repo, repo_env, run

# What no stage declares, and why (dvc.yaml's header says the same): how a stage is launched and
# how fast it runs, and bookkeeping. A new knob must land in dvc.yaml or here.
NOT_DECLARED = {
    "recipe": {"checkpoint_every_steps", "keep_checkpoints", "log_every_steps",  # cadence
               "eval_batch_size", "throughput_batch", "throughput_iters"},  # timing only
    # page cache or private copy: the same bytes; worker count: the same batches
    # (test_data_loaders.py::test_batches_depend_on_seed_epoch_and_index_only)
    "loader": {"os_cache", "num_workers"},
    "launch": {"launcher", "profile", "timeout_min"},
    "convert": set(SPEED_SETTINGS),  # byte-identical betons (tests/test_data_convert.py)
    "transfer_recipe": {"checkpoint_every_iters", "keep_checkpoints", "log_every_iters"},  # cadence
}
TRAINING = ("train_", "finetune_", "ablation_")
TRANSFER = ("coco_", "ade20k_")


@pytest.fixture(scope="module")
def stages():
    return load_stages(REPO)


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def _keys(stage: dict) -> list[str]:
    return stage["params"].get("params.yaml", [])


def test_every_run_has_its_stage_and_back(stages, params):
    commands = {"train": "stages.train", "finetune": "stages.train --finetune", "ablation": "stages.ablation"}
    for kind, runs in (("train", params.train.runs), ("finetune", params.finetune.runs),
                       ("ablation", params.ablation.runs)):
        names = {n for n in stages if n.startswith(kind + "_")}
        assert names == {f"{kind}_{k}" for k in runs}, kind
        for key in runs:
            st = stages[f"{kind}_{key}"]
            assert st["cmd"] == f"python -m {commands[kind]} {key}"
            assert f"{kind}.runs.{key}" in _keys(st) and not any(
                k.startswith(f"{kind}.runs.") and k != f"{kind}.runs.{key}" for k in _keys(st))
            assert {f"outputs/{kind}_{key}", f"metrics/{kind}_{key}.json", f"plots/{kind}_{key}.json"} <= set(st["outs"])


def test_every_ablation_row_has_its_stage_and_each_ablation_stage_one_row(stages):
    from pipeline.tracking.paper_tables import all_rows, stage_row

    for row in all_rows():
        if row.table in (7, 8, 9):
            assert row.stage in stages, row.source
    for name in stages:
        if name.startswith("ablation_"):
            assert stage_row(name).table in (7, 8, 9), name


def test_finetune_depends_on_the_stage_its_init_from_names(stages, params):
    for key, run in params.finetune.runs.items():
        st = stages[f"finetune_{key}"]
        assert f"outputs/train_{run.init_from}" in st["deps"]
        assert upstream(stages, f"finetune_{key}") == ["convert_imagenet", f"train_{run.init_from}"]


def test_every_transfer_run_has_its_stage_on_its_weights_and_data(stages, params):
    assert {n for n in stages if n.startswith(TRANSFER)} == set(params.transfer.runs)
    for key, run in params.transfer.runs.items():
        st = stages[key]
        dataset = "ade20k" if run.model == "upernet" else "coco"
        assert st["cmd"] == f"python -m stages.transfer {key}"
        assert {f"data/{dataset}", f"outputs/train_{run.init_from}"} <= set(st["deps"])
        assert upstream(stages, key) == sorted([f"prepare_{dataset}", f"train_{run.init_from}"])
        assert f"transfer.runs.{key}" in _keys(st) and f"train.runs.{run.init_from}.model" in _keys(st)
        assert not any(k.startswith("transfer.runs.") and k != f"transfer.runs.{key}" for k in _keys(st))
        section, model = ("segmentation", SegmentationRecipe) if run.model == "upernet" else ("detection", DetectionRecipe)
        declared = {k.split(".", 3)[3] for k in _keys(st) if k.startswith(f"transfer.{section}.{params.profile}.")}
        assert declared | NOT_DECLARED["transfer_recipe"] == set(model.model_fields), key
        assert not declared & NOT_DECLARED["transfer_recipe"], key
        assert {"launch.tasks", "data.loader.mean", "data.loader.std"} <= set(_keys(st))
    for dataset in ("coco", "ade20k"):
        assert {f"transfer.{dataset}", f"transfer.builtin.{dataset}"} <= set(_keys(stages[f"prepare_{dataset}"]))


def test_declared_params_exist_and_cover_each_knob_or_leave_it_out_on_purpose(stages, params):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, st in stages.items():
        assert set(st["params"]) <= {"params.yaml"}, name
        for key in _keys(st):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} is not in params.yaml"
                node = node[part]
    sections = {"recipe": RecipeParams, "loader": LoaderParams, "launch": LaunchParams}
    for name, st in stages.items():
        if not name.startswith(TRAINING):
            continue
        kind = name.split("_")[0]
        kind = "train" if kind == "ablation" else kind  # the ablations train with the pretraining recipe
        declared = {"recipe": {k.split(".", 2)[2] for k in _keys(st) if k.startswith(f"{kind}.{params.profile}.")},
                    "loader": {k[len("data.loader."):] for k in _keys(st) if k.startswith("data.loader.")},
                    "launch": {k[len("launch."):] for k in _keys(st) if k.startswith("launch.")}}
        for section, model in sections.items():
            assert declared[section] | NOT_DECLARED[section] == set(model.model_fields), (name, section)
            assert not declared[section] & NOT_DECLARED[section], (name, section)
        other = "paper" if params.profile == "builtin" else "builtin"
        assert not any(k.startswith(f"{kind}.{other}") for k in _keys(st)), f"{name} declares the other profile"
    convert = {k.split(".", 2)[2] for k in _keys(stages["convert_imagenet"])}
    assert convert | NOT_DECLARED["convert"] == set(ConvertParams.model_fields) and not convert & NOT_DECLARED["convert"]


def _module_file(module: str) -> Path | None:
    p = REPO.joinpath(*module.split("."))
    for f in (p / "__init__.py", p.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Our modules that `path` imports, at top level or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("pipeline", "stages")}


def files_run_by(module: str) -> set[str]:
    """The files importing `module` runs: its import closure within the repo, parent packages
    included, less the __init__ files that hold nothing but a docstring."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for q in [".".join(parts[:i]) for i in range(1, len(parts) + 1)]:
            f = _module_file(q)
            if q not in seen and f is not None:
                seen[q] = f
                todo.extend(_imports(f, q))
    out = set()
    for f in seen.values():
        body = ast.parse(f.read_text()).body
        if f.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body):
            continue
        out.add(str(f.relative_to(REPO)))
    return out


def test_code_deps_are_the_files_each_stage_runs(stages):
    produced = {o.rstrip("/") for st in stages.values() for o in st["outs"]}
    for name, st in stages.items():
        for dep in st["deps"]:
            assert (REPO / dep).exists() or dep in produced, f"{name}: dep {dep} does not exist"
        if st["always_changed"]:
            continue  # reruns every time: its deps decide nothing
        entry = re.match(r"python -m (\S+)", st["cmd"]).group(1)
        code = {d for d in st["deps"] if d.endswith(".py")}
        runs = files_run_by(entry)
        assert code == runs, f"{name}: missing {sorted(runs - code)}, not run {sorted(code - runs)}"


# --- under the real DVC ------------------------------------------------------------------------


def _fake_outputs(repo: Path, stages: dict) -> None:
    """Every stage's outputs as placeholders, so `dvc commit` records a lock without running
    anything: what is compared below is deps and params, which the lock then holds as they are."""
    for st in stages.values():
        for out in st["outs"]:
            p = repo / out
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("{}\n")
            else:
                p.mkdir(parents=True, exist_ok=True)
                (p / "placeholder").write_text("x\n")


def _stale(repo: Path, env: dict) -> set[str]:
    out = json.loads(run([DVC, "status", "--json"], repo, env) or "{}")
    return set(out) - {"report_inputs"}  # always_changed


def _edit(repo: Path, edit) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    edit(p)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _bump(node):
    """Every leaf of a params block changed (numbers, booleans, strings, lists)."""
    if isinstance(node, dict):
        return {k: _bump(v) for k, v in node.items()}
    if isinstance(node, bool):
        return not node
    if isinstance(node, (int, float)):
        return node + 1
    if isinstance(node, list):
        return [_bump(v) for v in node] + [0]
    return f"{node}-changed" if node is not None else 7


@pytest.mark.dvc
def test_no_result_knob_leaves_dvc_status_clean_and_code_edits_stale_their_stages(tmp_path, stages):
    repo = copy_repo(tmp_path / "repo", skip=("metrics/", "plots/", "reports/", "outputs/", "data/"))
    env = repo_env()
    _fake_outputs(repo, stages)
    run([DVC, "commit", "--force", "--quiet"], repo, env)  # the one slow step (~20 s on a busy 2-core machine)
    training = {n for n in stages if n.startswith(TRAINING)}

    def bookkeeping(p):  # with profile builtin: the paper recipes, launching, speed and cadence
        assert p["profile"] == "builtin"
        p["train"]["paper"] = _bump(p["train"]["paper"])
        p["finetune"]["paper"] = _bump(p["finetune"]["paper"])
        for section in ("train", "finetune"):
            for k in NOT_DECLARED["recipe"]:
                p[section]["builtin"][k] += 1
        p["launch"].update(launcher="slurm", profile="gpu_example", timeout_min=5)
        p["data"]["loader"].update(os_cache=not p["data"]["loader"]["os_cache"], num_workers=5)
        p["data"]["convert"].update(num_workers=7, chunk_size=3, checkpoint_every_s=5)
        for section in ("detection", "segmentation"):
            p["transfer"][section]["paper"] = _bump(p["transfer"][section]["paper"])
            for k in NOT_DECLARED["transfer_recipe"]:
                p["transfer"][section]["builtin"][k] += 1

    _edit(repo, bookkeeping)
    for code in ("pipeline/models/report.py", "pipeline/models/ablation_report.py", "pipeline/train/synthetic.py",
                 "pipeline/launch/dag.py"):
        with open(repo / code, "a") as f:
            f.write("\n# edited\n")  # code no stage runs
    assert _stale(repo, env) == set()

    model = repo / "pipeline/models/hiri_vit.py"
    source = model.read_text()
    model.write_text(source + "\n# edited\n")
    transfer = {n for n in stages if n.startswith(TRANSFER)}
    assert _stale(repo, env) == training | transfer | {"report"}  # Fig. 1 measures the model
    model.write_text(source)
    ablations = {n for n in stages if n.startswith("ablation_")}
    variants = repo / "pipeline/models/ablations/variants.py"
    source = variants.read_text()
    variants.write_text(source + "\n# edited\n")  # the ablations' code: their stages only, no main stage
    assert _stale(repo, env) == ablations
    variants.write_text(source)

    # the conversion's code: the conversion alone (its betons come out byte-identical, and
    # training does not import it)
    conversion = repo / "pipeline/data/convert.py"
    source = conversion.read_text()
    conversion.write_text(source + "\n# edited\n")
    assert _stale(repo, env) == {"convert_imagenet"}
    conversion.write_text(source)

    # one recipe value of the profile that runs: the 9 pretraining stages and the ablations trained
    # with the same recipe; a fine-tune's init_from:
    # that fine-tune, whose upstream stage (and SLURM job key) follow
    key = stage_key(repo, "finetune_hiri_s_768")
    _edit(repo, lambda p: (p["train"]["builtin"].update(epochs=3),
                           p["finetune"]["runs"]["hiri_s_768"].update(init_from="hiri_s_384")))
    assert _stale(repo, env) == {n for n in training if n.startswith(("train_", "ablation_"))} | {"finetune_hiri_s_768"}
    resolved = load_stages(repo)
    assert upstream(resolved, "finetune_hiri_s_768") == ["convert_imagenet", "train_hiri_s_384"]
    assert stage_key(repo, "finetune_hiri_s_768", resolved) != key

    # a COCO recipe value: the four COCO stages and nothing else; an ADE20K one: the two UPerNets
    _edit(repo, lambda p: (p["train"]["builtin"].update(epochs=2),
                           p["finetune"]["runs"]["hiri_s_768"].update(init_from="hiri_s_448")))
    assert _stale(repo, env) == set()
    _edit(repo, lambda p: p["transfer"]["detection"]["builtin"].update(lr=1.0))
    assert _stale(repo, env) == {n for n in transfer if n.startswith("coco_")}
    _edit(repo, lambda p: (p["transfer"]["detection"]["builtin"].update(lr=2.0e-4),
                           p["transfer"]["segmentation"]["builtin"].update(lr=1.0)))
    assert _stale(repo, env) == {n for n in transfer if n.startswith("ade20k_")}
