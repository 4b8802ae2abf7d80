"""docs/transfer.md's counts (pipeline/transfer/counts.py): the counting checked by hand on small
pieces, the page's hand-written part kept, the detectors' parameters against Table 4."""
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from pipeline.models.flops import checked_analysis
from pipeline.models.flops import n_params
from pipeline.transfer import counts
from pipeline.transfer.counts import MARKER, PARAMS_TOLERANCE, MaskRCNNDummy, detector, paper_values, write

DOC = Path(__file__).resolve().parents[1] / "docs" / "transfer.md"


@pytest.fixture(scope="module")
def maskrcnn_s():
    torch.manual_seed(0)
    return detector("maskrcnn", "hiri_vit_s")


@pytest.fixture(scope="module")
def retinanet_s():
    torch.manual_seed(0)
    return detector("retinanet", "hiri_vit_s")


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_conv_count_equals_the_hand_count(size):
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    h, w = size
    by_hand = 8 * (h // 2) * (w // 2) * 3 * 3 * 3  # one MAC per weight per output position
    assert checked_analysis(conv, size).total() == by_hand


def test_maskrcnn_roi_heads_run_on_1000_boxes_and_100_masks(maskrcnn_s):
    """The box head on every proposal, the mask head on the first 100, roi_align counted zero."""
    size = (256, 320)
    analysis = checked_analysis(MaskRCNNDummy(maskrcnn_s, size), size, handles=counts.DETECTION_HANDLES)
    by_module = analysis.by_module()
    box = 256 * 7 * 7 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * 81 * 4  # fc6, fc7, class and box logits
    mask = 4 * 256 * 256 * 9 * 14 * 14 + 256 * 256 * 4 * 14 * 14 + 256 * 81 * 28 * 28  # 4 convs, deconv, logits
    assert by_module["box_head"] + by_module["box_predictor"] == counts.PROPOSALS * box
    assert by_module["mask_head"] + by_module["mask_predictor"] == counts.MASK_ROIS * mask
    assert "roi_align" not in analysis.by_operator()


@pytest.mark.parametrize("kind", ["retinanet", "maskrcnn"])
def test_small_detectors_parameters_within_1_percent_of_table_4(kind, maskrcnn_s, retinanet_s):
    model = maskrcnn_s if kind == "maskrcnn" else retinanet_s
    paper = paper_values(4, "HIRI-ViT-S", counts.DETECTORS[kind])["values"]["params_m"]
    ours = n_params(model) / 1e6
    assert abs(ours / paper - 1) <= PARAMS_TOLERANCE, (kind, ours, paper)


def test_baseline_body_gets_its_own_strides_and_table_4_parameters(retinanet_s):
    """A timm body (the benchmark's and the calibration's PVTv2-B2) in the same RetinaNet: anchors at
    its own strides 8-128 (ours at 16-256, twice the input), parameters of Table 4's PVTv2-B2 row."""
    body = timm.create_model("pvt_v2_b2", features_only=True, out_indices=(1, 2, 3))
    pvt = detector("retinanet", "pvt_v2_b2", body)
    # mmdet's anchors: octave base scale 4 times the level's stride, on P3..P7
    assert [s[0] for s in pvt.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    assert [s[0] for s in retinanet_s.anchor_generator.sizes] == [64, 128, 256, 512, 1024]
    paper = paper_values(4, "PVTv2-B2", "RetinaNet")["values"]["params_m"]
    assert abs(n_params(pvt) / 1e6 / paper - 1) <= PARAMS_TOLERANCE


def test_rewrite_keeps_the_hand_written_part(tmp_path):
    out = tmp_path / "transfer.md"
    write(out, f"# first\n\n{MARKER}\n")
    assert out.read_text() == f"# first\n\n{MARKER}\n"
    out.write_text(out.read_text() + "\n## Hand-written\n\nkept text\n")
    write(out, f"# second\n\n{MARKER}\n")
    text = out.read_text()
    assert text.startswith("# second\n") and "# first" not in text
    assert text.endswith(f"{MARKER}\n## Hand-written\n\nkept text\n")


def test_rewrite_refuses_a_page_without_the_marker(tmp_path):
    out = tmp_path / "transfer.md"
    out.write_text("hand-written only\n")
    with pytest.raises(ValueError, match="no marker line"):
        write(out, f"# generated\n\n{MARKER}\n")
    assert out.read_text() == "hand-written only\n"


def test_committed_page_has_one_marker():
    assert DOC.read_text().count(MARKER) == 1


def _fake_rows(gflops_factor: float) -> dict:
    """Counts as `measure` returns them, at the paper's values times `gflops_factor`."""
    rows = {}
    for arch, name in counts.PAPER_NAMES.items():
        for kind, det in counts.DETECTORS.items():
            p = paper_values(4, name, det)["values"]
            g = (p["gflops"] or 240.0) * gflops_factor
            rows[(kind, arch, counts.padded(counts.DET_INPUT))] = counts.Count(p["params_m"], g, {"backbone": g / 2}, 0.0, 0.0)
        p = paper_values(6, name)["values"]
        for size in counts.SEG_INPUTS:
            g = p["gflops"] * gflops_factor * (size / counts.SEG_INPUTS[0]) ** 2
            rows[("upernet", arch, (size, size))] = counts.Count(p["params_m"], g, {"backbone": g / 2}, 0.0, 0.0)
    return rows


@pytest.mark.parametrize("factor, mark", [(1.04, "| met |"), (1.06, "| **not met** |")])
def test_page_marks_the_gflops_target(factor, mark):
    rows = _fake_rows(factor)
    text = counts.render(rows, {}, [], "input 1200x1600 is not a multiple of 64")
    retinanet_s = next(line for line in text.splitlines() if line.startswith("| RetinaNet | hiri_vit_s | 1600x1216"))
    assert retinanet_s.endswith(mark)
    assert text.rstrip("\n").endswith(MARKER)
