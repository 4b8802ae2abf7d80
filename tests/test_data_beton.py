"""The resumable beton writer: FFCV's own one-process file, byte for byte, however often it is
interrupted and resumed."""
from __future__ import annotations

import numpy as np
import pytest
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

from pipeline.data.beton import BetonWriter, encode_sample

N = 48


def fields() -> dict:
    return {"image": RGBImageField(write_mode="proportion", max_resolution=320, compress_probability=0.5,
                                   jpeg_quality=90),
            "label": IntField()}


def image(i: int) -> np.ndarray:
    # sizes vary so that samples end at every kind of place in a page; some are shrunk to 320
    rng = np.random.default_rng(i)
    h, w = 160 + (i * 37) % 200, 150 + (i * 53) % 210
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 3 + i) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1) + rng.integers(0, 40, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class Samples:
    """What FFCV's writer iterates; numpy is seeded per index, as pipeline.data.convert does, so
    that the JPEG-or-raw draw is the same in both writers."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        np.random.seed([0, i])
        return image(i), i % 7


def encoded(i: int):
    sample = Samples()[i]
    return encode_sample(fields(), sample)


def ffcv_beton(path, page_size: int) -> bytes:
    DatasetWriter(str(path), fields(), page_size=page_size, num_workers=1).from_indexed_dataset(Samples(), chunksize=8)
    return path.read_bytes()


def written(path, page_size: int, stops=(), key="k") -> bytes:
    """Write all samples; at each stop (samples appended, samples more before the "kill"), take a
    checkpoint, append some more, then drop the writer unfinished and reopen it."""
    w = BetonWriter.open(path, fields(), N, key, page_size)
    for at, more in stops:
        while w.next < at:
            w.append(encoded(w.next))
        w.checkpoint()
        for _ in range(more):  # written after the checkpoint, lost with the process
            w.append(encoded(w.next))
        w.close()
        w = BetonWriter.open(path, fields(), N, key, page_size)
        assert w.next == at
    while w.next < N:
        w.append(encoded(w.next))
    w.finish()
    return path.read_bytes()


@pytest.mark.parametrize("page_size", [MIN_PAGE_SIZE, 4 * MIN_PAGE_SIZE])
def test_the_same_bytes_as_ffcvs_writer(tmp_path, page_size):
    reference = ffcv_beton(tmp_path / "ffcv.beton", page_size)
    ours = written(tmp_path / "ours.beton", page_size)
    assert len(reference) == len(ours) and reference == ours
    # the small pages really spread the samples over several pages, some raw, some JPEG
    from ffcv.reader import Reader

    r = Reader(str(tmp_path / "ours.beton"))
    assert set(r.metadata["f0"]["mode"].tolist()) == {0, 1}
    assert page_size > MIN_PAGE_SIZE or len({int(p) // page_size for p in r.alloc_table["ptr"]}) >= 3


def test_killed_and_resumed_any_number_of_times_gives_the_same_bytes(tmp_path):
    reference = written(tmp_path / "whole.beton", MIN_PAGE_SIZE)
    # kills right after a checkpoint, mid-page, after pages written past the checkpoint, at the end
    stops = ((0, 3), (5, 0), (11, 15), (33, 2), (N, 0))
    path = tmp_path / "resumed.beton"
    assert written(path, MIN_PAGE_SIZE, stops) == reference
    # nothing left but the betons and their states (which say "complete")
    assert sorted(p.name for p in tmp_path.glob("*resumed*")) == [".resumed.beton.state.json", "resumed.beton"]


def test_a_checkpoint_of_other_input_is_not_resumed(tmp_path):
    path = tmp_path / "b.beton"
    w = BetonWriter.open(path, fields(), N, "old")
    for i in range(10):
        w.append(encoded(i))
    w.checkpoint()
    w.close()
    said = []
    w = BetonWriter.open(path, fields(), N, "new", log=said.append)
    assert w.next == 0 and "of other input or settings; starting over" in said[0]
    w.close()
    # a complete beton of the same key is taken as it is; its file gone, it is written again
    whole = written(path, 4 * MIN_PAGE_SIZE, key="new")
    assert BetonWriter.open(path, fields(), N, "new").complete
    path.unlink()
    again = BetonWriter.open(path, fields(), N, "new")
    assert not again.complete and again.next == 0
    again.close()
    assert written(path, 4 * MIN_PAGE_SIZE, key="new") == whole


def test_a_sample_larger_than_a_page_is_refused_naming_it(tmp_path):
    w = BetonWriter.open(tmp_path / "b.beton", {"image": RGBImageField(), "label": IntField()}, 1, "k", MIN_PAGE_SIZE)
    big = encode_sample(w.fields, (np.zeros((1024, 1024, 3), np.uint8), 0))  # 3 MiB raw > 2 MiB pages
    with pytest.raises(ValueError, match=r"sample 0 needs 3145728 bytes, more than a page \(2097152 bytes\)"):
        w.append(big)
    w.close()
