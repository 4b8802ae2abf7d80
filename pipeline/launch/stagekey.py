"""A DVC stage's identity for re-attaching to its SLURM job: sha256 over the stage's name and
command, the values of the params it lists, and its deps.

The stages are read through DVC itself (load_stages), never from the raw YAML: dvc.yaml lists templated params (`train.${profile}.epochs`) and deps
(`outputs/train_${finetune.runs.hiri_s_768.init_from}`) and YAML anchors, which only DVC's own
resolution turns into what `dvc repro` compares.

A dep that another stage produces counts by that stage's key, not by its content: the key of
train_hiri_s_448 is then the same when `python -m pipeline.launch` computes it (before
convert_imagenet's job has rewritten data/ffcv) and when `dvc repro` computes it later; it also
never hashes hundreds of GB of FFCV files. Other deps (code) are hashed by content.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import yaml


class StageKeyError(KeyError):
    pass


def load_stages(repo_root: Path) -> dict[str, dict]:
    """The pipeline's stages as DVC resolves them (templating filled in from params.yaml):
    {name: {"cmd": str | list, "deps": [path], "params": {params file: [key]}, "outs": [path],
            "always_changed": bool}}.
    Paths are as dvc.yaml spells them, relative to the repository root; outs include metrics and
    plots."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages: dict[str, dict] = {}
    with Repo(str(repo_root)) as repo:
        for st in repo.index.stages:
            if not getattr(st, "name", None):  # a .dvc file, not a pipeline stage
                continue
            deps, params = [], {}
            for d in st.deps:
                if isinstance(d, ParamsDependency):
                    keys = params.setdefault(d.def_path, [])
                    keys += [k for k in d.params if k not in keys]  # DVC keeps repeats
                else:
                    deps.append(d.def_path)
            stages[st.name] = {"cmd": st.cmd, "deps": deps, "params": params,
                               "outs": [o.def_path for o in st.outs], "always_changed": st.always_changed}
    return stages


def producers(stages: dict[str, dict]) -> dict[str, str]:
    """out path -> the stage that writes it."""
    return {p.rstrip("/"): name for name, st in stages.items() for p in st["outs"]}


def producer_of(dep: str, prod: dict[str, str]) -> str | None:
    dep = dep.rstrip("/")
    for out, name in prod.items():
        if dep == out or dep.startswith(out + "/") or out.startswith(dep + "/"):
            return name
    return None


def upstream(stages: dict[str, dict], name: str) -> list[str]:
    prod = producers(stages)
    found = {producer_of(d, prod) for d in stages[name]["deps"]}
    return sorted(n for n in found if n and n != name)


def _hash_path(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    else:
        h.update(b"<missing>")
    return h.hexdigest()


def _param_values(repo_root: Path, stage: dict) -> dict:
    out = {}
    for file, keys in stage["params"].items():
        data = yaml.safe_load((Path(repo_root) / file).read_text()) or {}
        for key in keys:
            value = data
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out[f"{file}:{key}"] = value
    return out


def stage_key(repo_root: Path, name: str, stages: dict[str, dict] | None = None) -> str:
    """The key of stage `name`; pass `stages` (load_stages) when computing several keys."""
    repo_root = Path(repo_root).resolve()
    stages = load_stages(repo_root) if stages is None else stages
    prod = producers(stages)

    @lru_cache(maxsize=None)
    def key(n: str) -> str:
        if n not in stages:
            raise StageKeyError(f"no stage {n!r} in {repo_root / 'dvc.yaml'}")
        st = stages[n]
        deps = {}
        for d in st["deps"]:
            up = producer_of(d, prod)
            deps[d] = f"stage:{up}:{key(up)}" if up and up != n else _hash_path(repo_root / d)
        blob = json.dumps({"stage": n, "cmd": st["cmd"], "params": _param_values(repo_root, st), "deps": deps},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    return key(name)
