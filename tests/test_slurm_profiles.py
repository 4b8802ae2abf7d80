"""Cluster profiles and params validation: no SLURM needed (fast)."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ParamsError, load_params
from pipeline.slurm_profiles import ProfileError, load_profile, stage_kind, time_to_minutes


def _write(tmp_path, name, data):
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


GOOD = {"partition": "gpu", "time": "2-00:00:00", "cpus_per_task": 8, "mem": "480G", "gpus_per_node": 8}


def test_shipped_profiles_load():
    local = load_profile("local").request("pretraining")
    assert (local.partition, local.world_size, local.gpus_per_node) == ("debug", 1, 0)
    two = load_profile("local2").request("pretraining")  # slurm/local/up.sh --nodes 2
    assert (two.partition, two.nodes, two.ntasks_per_node, two.world_size) == ("multi", 2, 1, 2)
    gpu = load_profile("gpu_example").request("pretraining")
    assert gpu.world_size == 8 and gpu.time_min == 2 * 24 * 60  # one task per GPU
    assert load_profile("gpu_example").request("conversion").gpus_per_node == 0


def test_unknown_profile_names_it_and_lists_known():
    with pytest.raises(ProfileError, match=r"unknown slurm profile 'nope'.*local"):
        load_profile("nope")


def test_unknown_field_is_named(tmp_path):
    d = _write(tmp_path, "p", {"kinds": {"pretraining": {**GOOD, "gpus": 4}}})
    with pytest.raises(ProfileError, match=r"(?s)p\.yaml.*kinds\.pretraining\.gpus: Extra inputs"):
        load_profile("p", d)


def test_missing_required_field_is_named(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "partition"}
    d = _write(tmp_path, "p", {"kinds": {"finetuning": bad}})
    with pytest.raises(ProfileError, match=r"kinds\.finetuning\.partition: required field missing"):
        load_profile("p", d)


def test_defaults_merge_and_bad_values(tmp_path):
    d = _write(tmp_path, "p", {"defaults": GOOD, "kinds": {"transfer": {"nodes": 2}}})
    assert load_profile("p", d).request("transfer").world_size == 16
    with pytest.raises(ProfileError, match=r"no entry for stage kind 'conversion'"):
        load_profile("p", d).request("conversion")
    d = _write(tmp_path, "q", {"kinds": {"transfer": {**GOOD, "time": "two days"}}})
    with pytest.raises(ProfileError, match=r"kinds\.transfer\.time.*not a SLURM time"):
        load_profile("q", d)
    d = _write(tmp_path, "r", {"kinds": {"transfer": {**GOOD, "tasks_per_node": 2}}})
    with pytest.raises(ProfileError, match=r"one task \(rank\) per GPU"):
        load_profile("r", d)


def test_time_formats():
    assert [time_to_minutes(t) for t in ("30", "90:00", "01:00:00", "2-00:00:00", "1-12", 45)] == \
        [30, 90, 60, 2880, 2160, 45]


def test_stage_kinds():
    stages = ("convert_imagenet", "train_hiri_s_448", "finetune_hiri_b_768", "coco_retinanet_hiri_s",
              "ablation_t8_hr_hr_t_t_t")
    assert [stage_kind(s) for s in stages] == ["conversion", "pretraining", "finetuning", "transfer", "pretraining"]


def test_params_launcher_slurm_validates_profile(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"launch": {"launcher": "slurm", "profile": "nope"}}))
    with pytest.raises(ParamsError, match=r"(?s)launch: .*unknown slurm profile 'nope'"):
        load_params(p)
    p.write_text(yaml.safe_dump({"launch": {"launcher": "slurm"}}))
    with pytest.raises(ParamsError, match=r"needs launch.profile"):
        load_params(p)
    p.write_text(yaml.safe_dump({"launch": {"launcher": "slurm", "profile": "local"}}))
    assert load_params(p).launch.profile == "local"
