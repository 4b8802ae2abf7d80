"""Cluster profiles: `slurm/profiles/<name>.yaml`, one resource request per stage kind.

A profile is validated whole (pydantic, unknown keys forbidden) when params.yaml is loaded with
`launch.launcher: slurm`, so a typo or a missing field is one error naming the profile file and the
key, before anything is submitted. What only the live cluster knows (does the partition exist, is
the time under its limit, do its nodes have that many GPUs) is checked by
`pipeline.launch.cluster.check_request` right before submission.

It lives beside config.py, not in pipeline/launch: validating params.yaml needs it, and it needs
only yaml and pydantic, so config imports it without reaching into the launch layer.

    # slurm/profiles/<name>.yaml
    description: what cluster this is for
    defaults: {partition: gpu, time: "2-00:00:00", ...}   # optional, merged under every kind
    kinds:
      conversion:  {...}   # prepare_data, convert_imagenet
      pretraining: {...}   # train_*
      finetuning:  {...}   # finetune_*
      transfer:    {...}   # coco_*, ade20k_*
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO_ROOT / "slurm" / "profiles"
KINDS = ("conversion", "pretraining", "finetuning", "transfer")
Kind = Literal["conversion", "pretraining", "finetuning", "transfer"]

_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+)(?::(?P<s>\d+))?$")
_MEM = re.compile(r"^(?P<n>\d+)(?P<u>[KMGT]?)B?$", re.IGNORECASE)


class ProfileError(ValueError):
    """A profile is unknown, unreadable, or invalid; the message names the file and the key."""


def time_to_minutes(value: str | int) -> int:
    """SLURM time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) to whole minutes, rounded up."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"{value!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)")
    d, h, mi, s = (int(m.group(k) or 0) for k in ("d", "h", "m", "s"))
    if m.group("d") and not m.group("h") and ":" not in text:  # "D-HH"
        d, h, mi = d, mi, 0
    elif not m.group("h") and m.group("s") and not m.group("d"):  # "MM:SS"
        pass
    elif m.group("h") and not m.group("s") and not m.group("d"):  # "HH:MM" is MM:SS in SLURM
        h, mi, s = 0, h, mi
    return d * 1440 + h * 60 + mi + (1 if s else 0)


def mem_to_mb(value: str | int) -> int:
    """SLURM memory (`64G`, `4000M`, plain MB) to MB."""
    if isinstance(value, int):
        return value
    m = _MEM.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a SLURM memory size (e.g. 64G, 4000M)")
    return int(m.group("n")) * {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group("u").upper()]


class StageRequest(BaseModel):
    """What one stage kind asks SLURM for. One task per GPU; CPU-only nodes run `tasks_per_node`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str = Field(min_length=1)
    time: str  # SLURM time, e.g. "2-00:00:00"; checked against the partition's MaxTime at submission
    cpus_per_task: int = Field(ge=1)
    mem: str  # per node, e.g. "480G"
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)  # default: gpus_per_node, or 1 without GPUs
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: dict[str, str | int | bool] = Field(default_factory=dict)  # --key=value, verbatim
    setup: list[str] = Field(default_factory=list)  # shell lines before the job (module load, activate)

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v):
        time_to_minutes(v if isinstance(v, int) else str(v))
        return str(v)

    @field_validator("mem", mode="before")
    @classmethod
    def _mem(cls, v):
        mem_to_mb(v if isinstance(v, int) else str(v))
        return str(v)

    @model_validator(mode="after")
    def _tasks(self):
        if self.gpus_per_node and self.tasks_per_node not in (None, self.gpus_per_node):
            raise ValueError(f"tasks_per_node {self.tasks_per_node} must equal gpus_per_node "
                             f"{self.gpus_per_node}: one task (rank) per GPU")
        clash = {k for k in self.extra_sbatch} & {"partition", "time", "nodes", "mem", "account", "qos",
                                                   "constraint", "gpus-per-node", "ntasks-per-node",
                                                   "cpus-per-task", "job-name", "output", "error"}
        if clash:
            raise ValueError(f"extra_sbatch sets {sorted(clash)}, which have their own fields")
        return self

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def time_min(self) -> int:
        return time_to_minutes(self.time)

    @property
    def mem_mb(self) -> int:
        return mem_to_mb(self.mem)


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    kinds: dict[Kind, StageRequest]

    def request(self, kind: str) -> StageRequest:
        if kind not in self.kinds:
            raise ProfileError(f"slurm profile {self.name!r} has no entry for stage kind {kind!r} "
                               f"(it has {sorted(self.kinds)}); add kinds.{kind} to {profile_path(self.name)}")
        return self.kinds[kind]


def stage_kind(stage: str) -> str:
    """Which profile entry a DVC stage uses."""
    if stage in ("prepare_data", "convert_imagenet"):
        return "conversion"
    if stage.startswith(("train_", "ablation_")):  # the ablations are pretraining runs (Tables 7-9)
        return "pretraining"
    if stage.startswith("finetune_"):
        return "finetuning"
    if stage.startswith(("coco_", "ade20k_")):
        return "transfer"
    raise ProfileError(f"stage {stage!r} has no stage kind (conversion, pretraining, finetuning, transfer)")


def available_profiles(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in Path(directory or PROFILE_DIR).glob("*.yaml"))


def profile_path(name: str, directory: Path | None = None) -> Path:
    return Path(directory or PROFILE_DIR) / f"{name}.yaml"


def load_profile(name: str, directory: Path | None = None) -> Profile:
    """Read and validate slurm/profiles/<name>.yaml (or `directory`/<name>.yaml); ProfileError names
    the file and key at fault."""
    path = profile_path(name, directory)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or "") or not path.is_file():
        raise ProfileError(f"unknown slurm profile {name!r}: no {path}; available: {available_profiles(directory)}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with 'kinds' (and optional 'defaults', 'description')")
    unknown = set(raw) - {"description", "defaults", "kinds"}
    if unknown:
        raise ProfileError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: description, defaults, kinds")
    defaults = raw.get("defaults") or {}
    kinds = raw.get("kinds") or {}
    if not isinstance(defaults, dict) or not isinstance(kinds, dict):
        raise ProfileError(f"{path}: 'defaults' and 'kinds' must be mappings")
    merged = {k: {**defaults, **(v or {})} for k, v in kinds.items()}
    try:
        return Profile.model_validate({"name": name, "description": raw.get("description", ""), "kinds": merged})
    except ValidationError as err:
        lines = [f"{path}: invalid slurm profile:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = "required field missing" if e["type"] == "missing" else e["msg"]
            lines.append(f"  {key}: {msg}" + ("" if e["type"] == "missing" else f" (got {e.get('input')!r})"))
        raise ProfileError("\n".join(lines)) from None
