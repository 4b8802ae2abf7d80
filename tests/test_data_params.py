"""Data parameters: validation, the paper profile's real paths, beton choice per resolution."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ParamsError, load_params
from pipeline.data.manifest import ManifestError, pick_max_side
from pipeline.data.sources import SourceError, resolve_sources


def params_with(tmp_path, **data):
    raw = yaml.safe_load(open("params.yaml"))
    profile = data.pop("profile", raw.get("profile"))
    raw["profile"] = profile
    for key, value in data.items():
        section = raw["data"]
        *parents, leaf = key.split("__")
        for p in parents:
            section = section[p]
        section[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_repo_params_validate_with_a_data_section():
    p = load_params()
    assert p.data.loader.auto_augment == "rand-m9-mstd0.5-inc1"
    assert p.data.loader.re_prob == 0.25 and p.data.loader.val_crop_pct == 0.875


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ParamsError, match=r"data.convert.jpeg_quality"):
        params_with(tmp_path, convert__jpeg_quality=101)
    with pytest.raises(ParamsError, match=r"data.builtin.*min_side 600 > max_side 500"):
        params_with(tmp_path, builtin__min_side=600, builtin__max_side=500)
    with pytest.raises(ParamsError, match=r"data.loader.backend"):
        params_with(tmp_path, loader__backend="dali")


def test_paper_profile_requires_real_paths(tmp_path):
    p = params_with(tmp_path, profile="paper")
    with pytest.raises(SourceError, match="data.imagenet and data.imagenet_v2"):
        resolve_sources(p)
    (tmp_path / "v2").mkdir()
    p = params_with(tmp_path, profile="paper", imagenet=str(tmp_path / "nowhere"), imagenet_v2=str(tmp_path / "v2"))
    with pytest.raises(SourceError, match=r"nowhere/train: folder not found \(data.imagenet = "):
        resolve_sources(p)


def test_beton_choice_per_resolution():
    assert pick_max_side([512, 896], 224, 0.875) == 512
    assert pick_max_side([512, 896], 448, 0.875) == 512
    assert pick_max_side([512, 896], 768, 0.875) == 896
    with pytest.raises(ManifestError, match="needs max side >= 1171.*data.convert.max_sides"):
        pick_max_side([512, 896], 1024, 0.875)
