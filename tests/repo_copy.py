"""A throw-away copy of this checkout for the tests that run DVC (and SLURM) end to end: the
files git knows (tracked and untracked-not-ignored), params edited per test, committed in a new
git repository so that DVC sees a clean workspace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's dvc, python
DVC = str(BIN / "dvc")
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900) -> str:
    """Run `cmd`; fail the test with its output unless it succeeds; return stdout + stderr."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def repo_env(**overrides: str | None) -> dict:
    """The environment for DVC in a copy: the venv first on PATH, a git identity; a None value unsets."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **GIT_ID}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def copy_repo(dst: Path, edit_params: Callable[[dict], None] | None = None,
              skip: tuple[str, ...] = (), keep_lock: bool = False) -> Path:
    """Copy the checkout's files (except those under `skip` prefixes, and dvc.lock unless
    `keep_lock`) to `dst`, let `edit_params` change params.yaml, and commit it all."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and not f.startswith(skip) and (keep_lock or f != "dvc.lock"):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    if edit_params is not None:
        edit_params_file(dst, edit_params)
    commit_all(dst)
    return dst


def edit_params_file(repo: Path, edit: Callable[[dict], None]) -> None:
    """Let `edit` change the params.yaml of `repo` (a copy) in place, as a dict."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit_all(dst: Path) -> None:
    env = repo_env()
    if not (dst / ".git").exists():
        run(["git", "init", "-q"], dst, env)
    run(["git", "add", "-A"], dst, env)
    run(["git", "commit", "-q", "-m", "copy"], dst, env)
