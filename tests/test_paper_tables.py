"""The paper's tables as data: values checked against the paper's own text, and the loader's checks."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pipeline.tracking import paper_tables as pt

REPO = Path(__file__).resolve().parent.parent


def paper_text() -> str:
    """../shared/paper/hiri-vit.md beside the repo root (CI: a fresh clone with shared/ beside it)."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, text=True)
    root = Path(top.stdout.strip()) if top.returncode == 0 and top.stdout.strip() else REPO
    for base in (root, REPO):
        path = base.parent / "shared" / "paper" / "hiri-vit.md"
        if path.is_file():
            return path.read_text()
    pytest.skip(f"paper text not found at {root.parent / 'shared/paper/hiri-vit.md'}")


def row(table: int, network: str, res: int | None = None, detector: str | None = None) -> pt.PaperRow:
    hits = [r for r in pt.all_rows() if r.table == table and r.network == network
            and (res is None or r.res == res) and (detector is None or r.detector == detector)]
    assert len(hits) == 1, (table, network, res, detector, hits)
    return hits[0]


def tokens(v: float) -> set[str]:
    return {f"{v:.1f}", f"{v:.1f}M", f"{v:.0f}", f"{v:.0f}M"}


def section(text: str, table: int) -> str:
    start = text.index(f"TABLE {table}")
    nxt = re.search(r"TABLE \d", text[start + 8:])
    return text[start: start + 8 + (nxt.start() if nxt else len(text))]


# (table, network, res, detector): rows whose line in the extracted text is clean, so every value
# we hold must appear on the line that starts with the network's name.
CLEAN_ROWS = [
    (2, "Swin-T", 224, None), (2, "PVTv2-B2", 224, None), (2, "CMT-S", 224, None), (2, "SE-CoTNetD-152", 224, None),
    (3, "HIRI-ViT-S", 768, None), (3, "HIRI-ViT-B", 768, None), (3, "HIRI-ViT-L", 768, None), (3, "Swin-B", 448, None),
    (3, "iFormer-L", 448, None), (7, "M-ViT", 224, None), (7, "IRDS", 224, None),
    (9, "PVTv2-B2 (+ HIRI-ViT)", 448, None), (9, "DaViT-Tiny", 224, None),
]


@pytest.mark.parametrize("table,network,res,detector", CLEAN_ROWS)
def test_clean_rows_match_the_paper_lines(table, network, res, detector):
    r = row(table, network, res, detector)
    sec = section(paper_text(), table) if table != 8 else paper_text()
    name = network.split(" (+")[0]
    # The name opens the line (Table 7: after the row number and stage count), then a citation or a tab.
    pattern = re.compile(rf"(^|\t){re.escape(name)}( \[|\t)")
    lines = [ln for ln in sec.splitlines() if pattern.search(ln)]
    if len(lines) > 1 and res is not None:  # e.g. HIRI-ViT-S at 224/384/448: the one with the resolution
        lines = [ln for ln in lines if f"\t{res}\t" in ln]
    if "(+ HIRI-ViT)" in network:
        lines = [ln for ln in lines if "(+ HIRI-ViT)" in ln]
    elif table == 9:
        lines = [ln for ln in lines if "(+ HIRI-ViT)" not in ln]
    assert lines, f"no line for {network} in Table {table}"
    cells = set(lines[0].replace("\t", " ").split())
    for metric, value in r.values.items():
        if value is not None and metric not in r.reconstructed:
            assert tokens(value) & cells, f"Table {table} {network}: {metric}={value} not on the line {lines[0]!r}"


def test_headline_values_are_the_ones_the_text_confirms():
    text = paper_text()
    s448, l448, l768 = row(2, "HIRI-ViT-S", 448), row(2, "HIRI-ViT-L", 448), row(3, "HIRI-ViT-L", 768)
    assert s448.values["top1"] == 84.3 and "best published Top-1 accuracy of 84.3%" in text
    assert l448.values["top1"] == 85.7 and "HIRI-ViT-L  $(448\\times448)$  is 85.7%" in text
    assert l768.values["top1"] == 86.6
    l224 = row(2, "HIRI-ViT-L", 224)
    assert (l224.values["top1"], l224.values["throughput"]) == (85.3, 660)
    assert "HIRI-ViT-L (224×224) is 85.3% and the corresponding throughput is 660" in text
    # Section 5.2/5.3 differences: HIRI-ViT-S beats ScalableViT-S by 1.4 AP (RetinaNet), Ortho-S by 0.5
    # AP^m (Mask R-CNN), HRViT-b2 by 1.2 mIoU.
    retina = row(4, "HIRI-ViT-S", detector="RetinaNet").values["ap_box"]
    assert retina - row(4, "ScalableViT-S", detector="RetinaNet").values["ap_box"] == pytest.approx(1.4)
    mask = row(4, "HIRI-ViT-S", detector="Mask R-CNN").values["ap_mask"]
    assert mask - row(4, "Ortho-S", detector="Mask R-CNN").values["ap_mask"] == pytest.approx(0.5)
    assert row(6, "HIRI-ViT-S").values["miou"] - row(6, "HRViT-b2").values["miou"] == pytest.approx(1.2)


def test_every_table_2_to_9_is_present_with_its_hiri_rows():
    tables = {t.table: t for t in pt.load_tables()}
    assert sorted(tables) == [2, 3, 4, 5, 6, 7, 8, 9]
    hiri = {t: sum(r.is_hiri for r in tables[t].rows) for t in (2, 3, 4, 5, 6)}
    assert hiri == {2: 9, 3: 3, 4: 4, 5: 4, 6: 2}
    assert len(tables[3].rows) == 25 and len(tables[7].rows) == 11 and len(tables[9].rows) == 6
    staged = {r.stage for r in pt.all_rows() if r.is_hiri}
    assert {f"train_hiri_{s}_{r}" for s in "sbl" for r in (224, 384, 448)} <= staged
    assert {f"finetune_hiri_{s}_768" for s in "sbl"} <= staged


def test_unreadable_cells_are_null_and_sourced():
    for r in pt.all_rows():
        for m in r.unreadable:
            assert r.values[m] is None, (r.row_id, m)
        assert r.source.startswith(f"Table {r.table}, row {r.index}")


def test_model_report_reads_the_same_numbers():
    from pipeline.models.report import PAPER_GFLOPS, PAPER_PARAMS_M

    assert PAPER_PARAMS_M == {"hiri_vit_s": 34.8, "hiri_vit_b": 54.4, "hiri_vit_l": 94.4}
    assert PAPER_GFLOPS[("hiri_vit_b", 384)] == 9.3 and PAPER_GFLOPS[("hiri_vit_l", 768)] == 63.4
    assert len(PAPER_GFLOPS) == 12


def _write(tmp_path, rows: str) -> Path:
    d = tmp_path / "paper"
    d.mkdir()
    (d / "table2.yaml").write_text("table: 2\nexperiment: e\ntask: classification\ncaption: c\n"
                                   "metrics: [top1, gflops]\nrows:\n" + rows)
    return d


@pytest.mark.parametrize("rows,message", [
    ("  - {network: A, top1: 80.0}\n", "no cell for ['gflops']"),
    ("  - {network: A, top1: '80', gflops: 1.0}\n", "top1='80' is not a number"),
    ("  - {network: A, top1: 80.0, gflops: 1.0, unreadable: [top1]}\n", "top1 is marked unreadable but has value 80.0"),
    ("  - {network: A, top1: 80.0, gflops: 1.0, topp1: 3}\n", "unknown fields ['topp1']"),
    ("  - {network: A, res: 224, top1: 80.0, gflops: 1.0}\n  - {network: A, res: 224, top1: 1.0, gflops: 1.0}\n",
     "duplicate row ids ['table2/a@224']"),
])
def test_loader_names_the_bad_cell(tmp_path, rows, message):
    d = _write(tmp_path, rows)
    with pytest.raises(pt.PaperDataError) as err:
        pt.load_tables(d)
    assert message in str(err.value) and "table2.yaml" in str(err.value)
