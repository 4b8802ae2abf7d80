"""Every dependency in pyproject.toml is pinned to one exact version, and it is the version this
environment runs: a cluster install months later then builds what the tests ran with."""
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_pinned_to_the_installed_version():
    loose, drifted = [], []
    for req in _requirements():
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            loose.append(str(req))
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            drifted.append(f"{req.name} (pinned {specs[0].version}, not installed)")
            continue
        if installed.split("+")[0] != specs[0].version:  # torch's local tag (+cu130) is the wheel's build
            drifted.append(f"{req.name} (pinned {specs[0].version}, installed {installed})")
    assert not loose, f"pin these to one version (==): {loose}"
    assert not drifted, f"pyproject.toml and the environment disagree: {drifted}"
