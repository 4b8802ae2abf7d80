"""A DVC stage's identity for re-attaching to its SLURM job: sha256 over the stage's name and
command, the values of the params it lists, and its deps.

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
    data = yaml.safe_load((Path(repo_root) / "dvc.yaml").read_text()) or {}
    return data.get("stages", {})


def _outs(stage: dict) -> list[str]:
    paths = []
    for section in ("outs", "metrics", "plots"):
        for item in stage.get(section, []) or []:
            paths.append(next(iter(item)) if isinstance(item, dict) else item)
    return [p.rstrip("/") for p in paths]


def producers(stages: dict[str, dict]) -> dict[str, str]:
    """out path -> the stage that writes it."""
    return {p: name for name, st in stages.items() for p in _outs(st)}


def producer_of(dep: str, prod: dict[str, str]) -> str | None:
    dep = dep.rstrip("/")
    for out, name in prod.items():
        if dep == out or dep.startswith(out + "/") or out.startswith(dep + "/"):
            return name
    return None


def upstream(stages: dict[str, dict], name: str) -> list[str]:
    prod = producers(stages)
    found = {producer_of(d, prod) for d in stages[name].get("deps", []) or []}
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
    cache: dict[str, dict] = {}
    for item in stage.get("params", []) or []:
        groups = item.items() if isinstance(item, dict) else [("params.yaml", [item])]
        for file, keys in groups:
            if file not in cache:
                cache[file] = yaml.safe_load((Path(repo_root) / file).read_text()) or {}
            for key in keys:
                value = cache[file]
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                out[f"{file}:{key}"] = value
    return out


def stage_key(repo_root: Path, name: str) -> str:
    repo_root = Path(repo_root).resolve()
    stages = load_stages(repo_root)
    prod = producers(stages)

    @lru_cache(maxsize=None)
    def key(n: str) -> str:
        if n not in stages:
            raise StageKeyError(f"no stage {n!r} in {repo_root / 'dvc.yaml'}")
        st = stages[n]
        deps = {}
        for d in st.get("deps", []) or []:
            up = producer_of(d, prod)
            deps[d] = f"stage:{up}:{key(up)}" if up and up != n else _hash_path(repo_root / d)
        blob = json.dumps({"stage": n, "cmd": st.get("cmd"), "params": _param_values(repo_root, st), "deps": deps},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    return key(name)
