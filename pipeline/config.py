"""params.yaml, validated before anything runs.

Each section is a pydantic model that forbids unknown keys, so a typo or a wrong type is one
clear error naming the key, not a traceback from deep inside a stage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Params(Section):
    profile: Literal["builtin", "paper"] = "builtin"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the offending key."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid parameters:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<root>"
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ParamsError("\n".join(lines)) from None
