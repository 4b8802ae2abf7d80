"""Conversion: nothing lost, nothing silently dropped, nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.convert import MANIFEST, SPEED_SETTINGS, ConversionError, Sources, convert
from pipeline.data.images import load_rgb, unreadable_reason
from pipeline.data.scan import DataLayoutError
from stages.convert_imagenet import main as convert_cli
from tests.data_fixtures import awkward_imagenet, tiny_builtin, tiny_convert_cfg


def beton_len(path) -> int:
    from ffcv.reader import Reader

    return Reader(str(path)).num_samples


def test_cli_skips_broken_files_and_converts_odd_modes(tmp_path, capsys):
    expect = awkward_imagenet(tmp_path / "src")
    out = tmp_path / "out"
    rc = convert_cli(["--src", str(tmp_path / "src"), "--out", str(out), "--max-sides", "64",
                      "--num-workers", "1", "--max-unreadable-fraction", "0.5", "--no-mlflow"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / MANIFEST).read_text())
    for split, n in expect["readable"].items():
        entry = manifest["splits"][split]
        assert entry["images"] == n
        assert beton_len(out / entry["betons"]["64"]) == n
        assert sum(entry["per_class"].values()) == n
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert set(skipped) == set(expect["skipped"])
    for name, fragment in expect["skipped"].items():
        assert fragment in skipped[name], (name, skipped[name])
    assert manifest["classes"] == ["n0", "n1"]
    assert "skipped" in capsys.readouterr().out  # the CLI names the skipped files too


def test_odd_modes_become_rgb_with_their_values(tmp_path):
    awkward_imagenet(tmp_path)
    d = tmp_path / "train" / "n0"
    for name in ("gray.JPEG", "cmyk.JPEG", "rgba.png", "palette.png", "deep16.png"):
        assert unreadable_reason(d / name) is None, name
        img = load_rgb(d / name)
        assert img.mode == "RGB" and img.size == (50, 40), name
    # 16-bit is scaled to 8 bits, not clipped: the brightest 16-bit pixel stays below white.
    deep = np.asarray(Image.open(d / "deep16.png"))
    got = np.asarray(load_rgb(d / "deep16.png"))[..., 0]
    np.testing.assert_array_equal(got, np.round(deep / 65535 * 255).astype(np.uint8))
    assert got.max() < 255


def test_too_many_unreadable_fails_naming_count_and_list(tmp_path):
    awkward_imagenet(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        convert(Sources(tmp_path / "src/train", tmp_path / "src/val"), out, tiny_convert_cfg(max_unreadable_fraction=0.1))
    msg = str(err.value)
    assert "train: 4 of 12 files" in msg and "unreadable.json" in msg
    listed = json.loads((out / "unreadable.json").read_text())
    assert len(listed["train"]["skipped"]) == 4
    assert not (out / MANIFEST).exists() and not list(out.rglob("*.beton"))


def test_cli_says_why_in_one_error_line(tmp_path, capsys):
    awkward_imagenet(tmp_path / "src")
    rc = convert_cli(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--max-sides", "64",
                      "--max-unreadable-fraction", "0.1", "--no-mlflow"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error: ") == 1 and "error: train: 4 of 12 files" in err, err


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    tiny_builtin(tmp_path / "b", classes=3, train=2, val=1, v2=1)
    train = tmp_path / "b/imagenet/train"
    for f in (train / "n90000001").iterdir():
        f.unlink()
    with pytest.raises(DataLayoutError, match="empty class folder.*n90000001"):
        convert(Sources(train, tmp_path / "b/imagenet/val"), tmp_path / "out", tiny_convert_cfg())


def test_differing_class_sets_are_an_error_naming_them(tmp_path):
    tiny_builtin(tmp_path / "b", classes=3, train=2, val=1, v2=1)
    val = tmp_path / "b/imagenet/val"
    (val / "n90000002").rename(val / "n77777777")
    with pytest.raises(DataLayoutError, match=r"only in .*train.*n90000002.*only in .*val.*n77777777"):
        convert(Sources(tmp_path / "b/imagenet/train", val), tmp_path / "out", tiny_convert_cfg())


def test_v2_folders_must_be_the_class_indices(tmp_path):
    tiny_builtin(tmp_path / "b", classes=3, train=2, val=1, v2=1)
    v2 = tmp_path / "b/imagenet_v2"
    (v2 / "2").rename(v2 / "5")
    with pytest.raises(DataLayoutError, match="only in .*V2.*5.*only in .*train.*2"):
        convert(Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val", v2), tmp_path / "out",
                tiny_convert_cfg())


def files_of(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_interrupted_conversion_looks_incomplete_then_resumes_to_the_same_files(tmp_path, monkeypatch):
    from pipeline.data.beton import BetonWriter

    tiny_builtin(tmp_path / "b", classes=3, train=8, val=2, v2=1)
    src = Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val", tmp_path / "b/imagenet_v2")
    cfg = tiny_convert_cfg(max_sides=[64, 96], chunk_size=2, checkpoint_every_s=0)
    convert(src, tmp_path / "whole", cfg)
    whole = files_of(tmp_path / "whole")
    out = tmp_path / "out"
    convert(src, out, cfg)  # a complete earlier run, then one killed while writing train
    append = BetonWriter.append

    def append_until_killed(self, sample):
        if "train" in self.path.name and self.next == 13:
            raise KeyboardInterrupt  # the process dies: nothing after the last checkpoint is kept
        append(self, sample)

    monkeypatch.setattr(BetonWriter, "append", append_until_killed)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, cfg)
    assert not (out / MANIFEST).exists() and not list(out.rglob("*.beton"))
    assert (tmp_path / "out.partial" / "r64" / ".train.beton.state.json").is_file()

    monkeypatch.setattr(BetonWriter, "append", append)
    said = []
    done = convert(src, out, cfg.model_copy(update={"num_workers": 2}), log=said.append)
    assert "[convert] train: resuming at image 12 of 24" in said[0], said  # the checkpoint after 6 chunks of 2
    assert done.resumed_images == 12 and done.metrics()["resumed_images"] == 12
    assert files_of(out) == whole and not (tmp_path / "out.partial").exists()


def test_killed_between_two_betons_of_a_split_resumes_the_unfinished_one(tmp_path, monkeypatch):
    from pipeline.data.beton import BetonWriter

    tiny_builtin(tmp_path / "b", classes=2, train=6, val=1, v2=1)
    src = Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val")
    cfg = tiny_convert_cfg(max_sides=[64, 96], chunk_size=2, checkpoint_every_s=1e9)
    convert(src, tmp_path / "whole", cfg)
    finish = BetonWriter.finish

    def killed_in_the_second(self):
        if self.path.parent.name == "r96" and self.path.name == "train.beton":
            raise KeyboardInterrupt
        finish(self)

    monkeypatch.setattr(BetonWriter, "finish", killed_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "out", cfg)
    monkeypatch.setattr(BetonWriter, "finish", finish)
    # r64 is complete, r96 has no checkpoint: r96 is written again beside the finished r64
    convert(src, tmp_path / "out", cfg.model_copy(update={"checkpoint_every_s": 0}))
    assert files_of(tmp_path / "out") == files_of(tmp_path / "whole")


def test_a_file_failing_after_the_check_stops_the_conversion_naming_it(tmp_path, monkeypatch):
    import pipeline.data.convert as conversion

    tiny_builtin(tmp_path / "b", classes=2, train=3, val=1, v2=1)
    src = Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val")
    victim = sorted((tmp_path / "b/imagenet/train").rglob("*.JPEG"))[4]
    load = conversion.load_rgb

    def changed_on_disk(path):
        if Path(path) == victim:
            raise OSError("image file is truncated")
        return load(path)

    monkeypatch.setattr(conversion, "load_rgb", changed_on_disk)
    with pytest.raises(ConversionError, match=rf"{victim} passed the check but failed while writing train: "
                                              r"OSError: image file is truncated"):
        convert(src, tmp_path / "out", tiny_convert_cfg())
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_v2_labels_are_the_folder_indices(tmp_path):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption

    tiny_builtin(tmp_path / "b", classes=12, train=1, val=1, v2=1)  # "10" sorts before "2" as text
    src = Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val", tmp_path / "b/imagenet_v2")
    manifest = convert(src, tmp_path / "out", tiny_convert_cfg(max_sides=[32])).manifest
    loader = Loader(str(tmp_path / "out" / manifest["splits"]["v2"]["betons"]["32"]), batch_size=12,
                    order=OrderOption.SEQUENTIAL, num_workers=1, drop_last=False,
                    pipelines={"image": None, "label": [IntDecoder()]})
    (labels,) = [b[0].ravel().tolist() for b in loader]
    assert labels == list(range(12))


def test_same_input_and_settings_give_byte_identical_betons_whatever_the_workers(tmp_path):
    from ffcv.reader import Reader

    tiny_builtin(tmp_path / "b", classes=3, train=5, val=2, v2=1)
    src = Sources(tmp_path / "b/imagenet/train", tmp_path / "b/imagenet/val", tmp_path / "b/imagenet_v2")
    outs = {}
    for workers, chunk in ((1, 4), (3, 2)):  # in-process, and the encoding pool
        out = tmp_path / f"out{workers}"
        convert(src, out, tiny_convert_cfg(write_mode="proportion", num_workers=workers, chunk_size=chunk))
        outs[workers] = files_of(out)
    assert sorted(outs[1]) == sorted(outs[3]) and len(outs[1]) == 4  # manifest + 3 betons
    for name, data in outs[1].items():
        assert data == outs[3][name], name
    manifest = json.loads(outs[1][Path(MANIFEST)])
    assert "seconds" not in manifest and not set(SPEED_SETTINGS) & set(manifest["settings"])
    modes = Reader(str(tmp_path / "out1/r64/train.beton")).metadata["f0"]["mode"]
    assert set(modes.tolist()) == {0, 1}  # the JPEG share is drawn per image, not all or nothing
