"""Fidelity to Tables 4 and 6: our detectors' and segmenter's parameters and GFLOPs beside the
paper's, counted as mmdetection's / mmsegmentation's `get_flops` counts them, and the counts
behind the stage choice. Writes the generated part of docs/transfer.md (above the marker line;
the hand-written part below it is kept).

    python -m pipeline.transfer.counts [--out docs/transfer.md] [--sizes s,b]   # 1-2 CPU minutes

What `get_flops` counts is the model's `forward_dummy` on one fixed input: backbone, neck and
heads, no post-processing. torchvision's detectors cannot be traced whole (their transform and
post-processing branch on data), so the same pieces are traced here, each as its own small
module (`RetinaNetDummy`, `MaskRCNNDummy`, `UPerNetDummy`) built from the detector's own parts.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from pipeline.models.flops import checked_analysis
from pipeline.models.flops import fmt_diff, n_params
from pipeline.tracking import paper_tables

from .backbone import DenseBackbone
from .detection import STAGES, TOTAL_STRIDE, build_detector
from .segmentation import STAGES as SEG_STAGES
from .segmentation import UPerNet

MARKER = "<!-- generated above by python -m pipeline.transfer.counts; hand-written below -->"
SIZES = {"s": "hiri_vit_s", "b": "hiri_vit_b"}
PAPER_NAMES = {"hiri_vit_s": "HIRI-ViT-S", "hiri_vit_b": "HIRI-ViT-B"}
DETECTORS = {"retinanet": "RetinaNet", "maskrcnn": "Mask R-CNN"}
# The targets.
PARAMS_TOLERANCE = 0.01
GFLOPS_TOLERANCE = 0.05
# Table 4: "the input resolution of HIRI-ViT is twice larger (1,600 x 1,200)"; baselines 800x600.
DET_INPUT = (1200, 1600)  # (H, W)
BASELINE_DET_INPUT = (600, 800)
# Table 6 counts baselines "at the resolution of 512 x 512"; 1024 is the input that reproduces
# the HIRI rows (the generated table shows both).
SEG_INPUTS = (1024, 512)
# mmdet's two-stage forward_dummy: the box head on 1000 proposals (the 1x config's test-time
# rpn max_per_img), the mask head on the first 100 of them.
PROPOSALS = 1000
MASK_ROIS = 100
# The ops the Mask R-CNN dummy emits beyond the backbone's: roi_align counts zero, as in mmcv's
# counter (which has no RoIAlign hook; `roi_align_gmacs` says what its samples would add), and the
# RoI level mapping's log2 does no multiply-adds.
DETECTION_HANDLES = {"torchvision::roi_align": None, "aten::log2": None}


def padded(size: tuple[int, int], multiple: int = TOTAL_STRIDE) -> tuple[int, int]:
    """(H, W) padded up to `multiple`, as the detectors' transform pads (`size_divisible`)."""
    return tuple(-(-s // multiple) * multiple for s in size)


def fixed_proposals(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """`n` boxes (x1, y1, x2, y2) inside an image of `size` (H, W), 16 to 512 px (at most half the
    image) a side. Where they
    lie does not change the count (roi_align counts zero); they only need to be valid boxes."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    side = torch.tensor([w, h], dtype=torch.float32)
    wh = torch.minimum(16 * 32 ** torch.rand(n, 2, generator=g), side / 2)
    xy = torch.rand(n, 2, generator=g) * (side - wh)
    return torch.cat([xy, xy + wh], dim=1)


class RetinaNetDummy(nn.Module):
    """mmdet's RetinaNet forward_dummy: backbone + FPN + head on all five levels; no anchors, box
    decoding or NMS."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.backbone, self.head = det.backbone, det.head

    def forward(self, x):
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]


class MaskRCNNDummy(nn.Module):
    """mmdet's two-stage forward_dummy: backbone + FPN, the RPN head on every level, the box head
    on `PROPOSALS` fixed boxes and the mask head on the first `MASK_ROIS`; no proposal decoding,
    NMS or mask pasting."""

    def __init__(self, det: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        heads = det.roi_heads
        self.backbone, self.rpn_head = det.backbone, det.rpn.head
        self.box_roi_pool, self.box_head, self.box_predictor = heads.box_roi_pool, heads.box_head, heads.box_predictor
        self.mask_roi_pool, self.mask_head, self.mask_predictor = (heads.mask_roi_pool, heads.mask_head,
                                                                   heads.mask_predictor)
        self.image_size = image_size
        self.register_buffer("proposals", fixed_proposals(PROPOSALS, image_size), persistent=False)

    def forward(self, x):
        feats = self.backbone(x)
        objectness, deltas = self.rpn_head(list(feats.values()))
        boxes = self.box_roi_pool(feats, [self.proposals], [self.image_size])
        scores, box_deltas = self.box_predictor(self.box_head(boxes))
        masks = self.mask_roi_pool(feats, [self.proposals[:MASK_ROIS]], [self.image_size])
        return objectness, deltas, scores, box_deltas, self.mask_predictor(self.mask_head(masks))


class UPerNetDummy(nn.Module):
    """mmseg's forward_dummy (encode_decode): backbone + decode head + the resize of the logits to
    the input; the auxiliary head is not run (its parameters still count)."""

    def __init__(self, seg: UPerNet):
        super().__init__()
        self.backbone, self.decode_head = seg.backbone, seg.decode_head

    def forward(self, x):
        logits = self.decode_head(self.backbone(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@dataclass
class Count:
    """One model at one input: parameters (M), GFLOPs and where they go."""
    params_m: float
    gflops: float
    parts: dict[str, float]  # GFLOPs per component
    attention: float  # the attention products' share (our sdpa handle)
    upsample: float  # bilinear / nearest resizes (fvcore counts them per output element)


def roi_align_gmacs(channels: int = 256, samples_per_bin: int = 4) -> float:
    """What RoIAlign's bilinear samples would add if counted (4 multiply-adds per sample, mmdet's
    fixed sampling_ratio 2 = 4 samples per bin): the box head's 7x7 and the mask head's 14x14."""
    return (PROPOSALS * 7 * 7 + MASK_ROIS * 14 * 14) * channels * samples_per_bin * 4 / 1e9


def _count(dummy: nn.Module, model: nn.Module, size: tuple[int, int], parts: dict[str, tuple[str, ...]],
           handles: dict | None = None) -> Count:
    analysis = checked_analysis(dummy, size, handles=handles)
    by_module, by_op = analysis.by_module(), analysis.by_operator()
    return Count(
        params_m=n_params(model) / 1e6,
        gflops=analysis.total() / 1e9,
        parts={name: sum(by_module.get(m, 0) for m in mods) / 1e9 for name, mods in parts.items()},
        attention=by_op.get("scaled_dot_product_attention", 0) / 1e9,
        upsample=sum(v for k, v in by_op.items() if k.startswith("upsample")) / 1e9,
    )


def detector(kind: str, arch: str, body: nn.Module | None = None) -> nn.Module:
    """The detector as the transfer stages build it; the transform's sizes do not enter the count."""
    return build_detector(kind, arch, min_size=DET_INPUT[0], max_size=DET_INPUT[1], mean=IMAGENET_DEFAULT_MEAN,
                          std=IMAGENET_DEFAULT_STD, body=body)


def count_detector(kind: str, arch: str, size: tuple[int, int], body: nn.Module | None = None) -> Count:
    det = detector(kind, arch, body)
    common = {"backbone": ("backbone.body",), "neck (FPN)": ("backbone.fpn",)}
    if kind == "retinanet":
        return _count(RetinaNetDummy(det), det, size, {**common, "heads": ("head",)})
    dummy = MaskRCNNDummy(det, size)
    parts = {**common, "RPN head": ("rpn_head",), "RoI heads": ("box_head", "box_predictor", "mask_head",
                                                                "mask_predictor")}
    return _count(dummy, det, size, parts, DETECTION_HANDLES)


def count_upernet(arch: str, size: int, stages: tuple[int, ...] = SEG_STAGES, body: nn.Module | None = None) -> Count:
    seg = UPerNet(arch, stages=stages, body=body)
    return _count(UPerNetDummy(seg), seg, (size, size), {"backbone": ("backbone",), "decode head": ("decode_head",)})


def paper_values(table: int, network: str, detector: str | None = None) -> dict:
    """The row's values and unreadable cells' raw text, from pipeline/tracking/paper/."""
    for r in paper_tables.all_rows():
        if r.table == table and r.network == network and r.detector == detector:
            return {"values": r.values, "raw": r.raw, "source": r.source}
    raise KeyError(f"Table {table} has no row for {detector or ''} {network}")


def lost_cell(row: dict, key: str) -> float | None:
    """A cell our text of the paper lost, read as its tokens joined ("24 1" -> 241): shown beside
    the count and in the stage readings, labelled as read; None where the tokens are not all digits."""
    raw = row["raw"].get(key, "").replace(" ", "")
    return float(raw) if raw.isdigit() else None


def backbone_refuses(arch: str, size: tuple[int, int]) -> str:
    """The backbone's own error for an input that does not divide its stride. The page says the
    unpadded input cannot be counted, so a backbone that takes it must stop this command."""
    try:
        DenseBackbone(arch, STAGES["maskrcnn"])(torch.zeros(1, 3, *size))
    except ValueError as err:
        return str(err)
    raise RuntimeError(f"{arch} now takes {size[1]}x{size[0]} unpadded: count that input beside the padded one")


# --- the measurements --------------------------------------------------------------------------


def measure(archs: list[str]) -> dict:
    torch.set_grad_enabled(False)
    det_size = padded(DET_INPUT)
    rows = {}
    for arch in archs:
        for kind in DETECTORS:
            rows[(kind, arch, det_size)] = count_detector(kind, arch, det_size)
            print(f"  counted {kind} {arch} @ {det_size[1]}x{det_size[0]}", flush=True)
        for size in SEG_INPUTS:
            rows[("upernet", arch, (size, size))] = count_upernet(arch, size)
            print(f"  counted upernet {arch} @ {size}x{size}", flush=True)
    return rows


def calibration() -> dict:
    """Our counting on baselines Table 4 lists and timm holds, at the baselines' input: PVTv2-B2
    under RetinaNet and Mask R-CNN at 800x600 (its C3-C5 / C2-C5, stride 32: mmdet pads to 32, and
    get_flops feeds the shape unpadded, which PVTv2 takes)."""
    out = {}
    for kind, indices in (("retinanet", (1, 2, 3)), ("maskrcnn", (0, 1, 2, 3))):
        body = timm.create_model("pvt_v2_b2", features_only=True, out_indices=indices)
        out[kind] = count_detector(kind, "pvt_v2_b2", BASELINE_DET_INPUT, body)
        print(f"  counted {kind} pvt_v2_b2 @ 800x600", flush=True)
    return out


@dataclass
class StageReading:
    """One stage set for one model: whole-model parameters with the unused later stages pruned
    (timm's features_only) and kept (as an mmdet-style backbone builds every stage), and GFLOPs
    at the input that reproduces the paper (None where not counted)."""
    model: str
    arch: str
    stages: tuple[int, ...]
    params_m: float
    params_kept_m: float
    paper_params_m: float
    gflops: float | None = None
    paper_gflops: float | None = None
    ours: bool = False
    estimated: bool = False  # gflops derived from our parts, not traced (see stage_section)
    paper_note: str = ""  # where the paper's GFLOPs cell is a lost one, read by `lost_cell`


def stage5_params_m(arch: str) -> float:
    """Stage 5 and the downsampling into it: what a backbone feeding stages 1-4 leaves unused."""
    model = timm.create_model(arch, img_size=448)
    return (n_params(model.stages[4]) + n_params(model.downsamples[4])) / 1e6


def stage_evidence(archs: list[str], rows: dict) -> list[StageReading]:
    """Our stage sets (counts from `rows`) beside the alternatives one stage earlier; UPerNet's
    alternative is also counted at 512x512, the input at which stages 1-4 sit at the baselines'
    strides (the decode head then runs at the same 128x128 grid as ours at 1024)."""
    det_size = padded(DET_INPUT)
    out = []
    for arch in archs:
        unused = stage5_params_m(arch)
        for kind, alt in (("retinanet", (1, 2, 3)), ("maskrcnn", (0, 1, 2, 3))):
            row = paper_values(4, PAPER_NAMES[arch], DETECTORS[kind])
            paper = row["values"]
            ours = rows[(kind, arch, det_size)]
            params = n_params(detector(kind, arch, DenseBackbone(arch, alt))) / 1e6
            # one stage earlier every level sits at half our stride: what runs on every pixel of
            # every level (neck, RetinaNet's head, the RPN head) costs about 4x; the RoI heads run
            # on a fixed number of RoIs and cost the same (tracing it would double the run)
            dense = sum(v for k, v in ours.parts.items() if k != "backbone" and not k.startswith("RoI"))
            estimate = ours.gflops + 3 * dense
            paper_gflops = paper["gflops"] if paper["gflops"] is not None else lost_cell(row, "gflops")
            note = "" if paper["gflops"] is not None else f" (lost cell \"{row['raw'].get('gflops')}\", read)"
            out.append(StageReading(DETECTORS[kind], arch, alt, params, params + unused, paper["params_m"],
                                    estimate, paper_gflops, estimated=True, paper_note=note))
            out.append(StageReading(DETECTORS[kind], arch, STAGES[kind], ours.params_m, ours.params_m,
                                    paper["params_m"], ours.gflops, paper_gflops, ours=True, paper_note=note))
        paper = paper_values(6, PAPER_NAMES[arch])["values"]
        alt = count_upernet(arch, 512, (0, 1, 2, 3))
        ours = rows[("upernet", arch, (1024, 1024))]
        stage5 = rows[("upernet", arch, (512, 512))].parts["backbone"] - alt.parts["backbone"]
        out.append(StageReading("UPerNet", arch, (0, 1, 2, 3), alt.params_m, alt.params_m + unused,
                                paper["params_m"], alt.gflops + stage5, paper["gflops"]))
        out.append(StageReading("UPerNet", arch, SEG_STAGES, ours.params_m, ours.params_m, paper["params_m"],
                                ours.gflops, paper["gflops"], ours=True))
        print(f"  counted the stage readings of {arch}", flush=True)
    return out


# --- the document ------------------------------------------------------------------------------


def _mark(ours: float, paper: float | None, tolerance: float) -> str:
    if paper is None:
        return "no paper value"
    return "met" if abs(ours / paper - 1) <= tolerance else "**not met**"


def _paper_cell(paper: dict, key: str) -> tuple[float | None, str]:
    value = paper["values"].get(key)
    if value is not None:
        return value, f"{value:g}"
    raw = paper["raw"].get(key)
    return None, f"unreadable (text: \"{raw}\")" if raw else "unreadable"


def _vs(ours: float | None, paper: float | None, tolerance: float, unit: str, estimated: bool = False) -> str:
    """A stage-table cell: our value, its difference to the paper's and the target's mark."""
    if ours is None:
        return "-"
    value = f"about {ours:.0f}" if estimated else f"{ours:.2f}{unit}" if unit else f"{ours:.1f}"
    if paper is None:
        return value
    return f"{value} ({fmt_diff(ours, paper)}, {_mark(ours, paper, tolerance)})"


def _stages_label(stages: tuple[int, ...]) -> str:
    return f"{stages[0] + 1}-{stages[-1] + 1}"


def unreadable_notes(rows: dict) -> list[str]:
    """For a paper GFLOPs cell our text lost, what ours would be against its tokens read as one number."""
    notes = []
    for (kind, arch, size), c in rows.items():
        if kind == "upernet":
            continue
        paper = paper_values(4, PAPER_NAMES[arch], DETECTORS[kind])
        joined = lost_cell(paper, "gflops")
        if paper["values"]["gflops"] is None and joined is not None:
            raw = paper["raw"]["gflops"]
            notes.append(f"The paper's GFLOPs cell for {DETECTORS[kind]} with {PAPER_NAMES[arch]} is lost in our text "
                         f"(\"{raw}\"); read as {joined:g}, ours would be {fmt_diff(c.gflops, joined)} "
                         f"({_mark(c.gflops, joined, GFLOPS_TOLERANCE)}).")
    return ["", *notes] if notes else []


def attention_verdict(rows: dict, calib: dict) -> str:
    """Which convention (attention products counted or not) lands within the GFLOPs target on the
    paper's rows, per table, at the inputs that reproduce them (the 512 rows left out)."""
    pairs: dict[str, list[tuple[float, float, float]]] = {"Table 4": [], "Table 6": [], "PVTv2-B2 (Table 4)": []}
    for (kind, arch, size), c in rows.items():
        if kind == "upernet" and size[0] != SEG_INPUTS[0]:
            continue
        table = "Table 6" if kind == "upernet" else "Table 4"
        paper = (paper_values(6, PAPER_NAMES[arch]) if kind == "upernet"
                 else paper_values(4, PAPER_NAMES[arch], DETECTORS[kind]))["values"]["gflops"]
        if paper:
            pairs[table].append((c.gflops, c.gflops - c.attention, paper))
    for kind, c in calib.items():
        paper = paper_values(4, "PVTv2-B2", DETECTORS[kind])["values"]["gflops"]
        pairs["PVTv2-B2 (Table 4)"].append((c.gflops, c.gflops - c.attention, paper))

    def within(values: list[tuple[float, float]]) -> str:
        n = sum(abs(ours / paper - 1) <= GFLOPS_TOLERANCE for ours, paper in values)
        return f"{n} of {len(values)}"

    cells = [f"{table}: {within([(w, p) for w, _, p in v])} with attention, {within([(b, p) for _, b, p in v])} "
             f"without" for table, v in pairs.items() if v]
    return f"Rows within {GFLOPS_TOLERANCE:.0%} of the paper by each convention: " + "; ".join(cells) + "."


def which_input(rows: dict) -> list[str]:
    """The paragraph on Table 6's input, from the UPerNet counts at both sizes."""
    seg = {(arch, size[0]): c for (kind, arch, size), c in rows.items() if kind == "upernet"}
    archs = list(dict.fromkeys(arch for arch, _ in seg))
    cells = []
    for arch in archs:
        paper = paper_values(6, PAPER_NAMES[arch])["values"]["gflops"]
        cells.append(f"{PAPER_NAMES[arch]} {seg[(arch, 512)].gflops:.1f} G at 512x512 and "
                     f"{seg[(arch, 1024)].gflops:.1f} G at 1024x1024 against the paper's {paper:g}")
    return [
        "**Which input reproduces Table 6's HIRI-ViT rows.** Table 6 says it counts GFLOPs at 512x512",
        "(the ADE20K crop), and its baselines' rows are 512 counts. Ours: " + "; ".join(cells) + ".",
        "The HIRI-ViT rows are counted at twice the baselines' input, 1024x1024, as Table 4's are",
        "(1600x1200 against 800x600): there the five-stage backbone's stages 2-5 run at the baselines'",
        "stride-4..32 grids of a 512 image. Section 5.3 does not give HIRI-ViT's segmentation input;",
        "these counts suggest that, as in detection, the backbone sees twice the baselines' input.",
    ]


def stage_section(evidence: list[StageReading]) -> list[str]:
    md = [
        "## Which backbone stages feed the necks",
        "",
        "The paper does not say. The input is twice the baselines', so stages 2-5 (strides 8-64) of",
        "the five sit at the baselines' C2-C5 grids: Mask R-CNN's FPN and UPerNet take stages 2-5,",
        "RetinaNet's P3-P5 stages 3-5 (the baselines' C3-C5). The readings one stage earlier, counted",
        "(stages numbered 1-5 as in Table 1). Parameters are the whole model's, with the unused stage 5",
        "pruned (timm's `features_only`, ours) and kept (an mmdet-style backbone builds every stage",
        "and the count includes it); GFLOPs at the input that reproduces the paper's HIRI rows, the",
        "alternative UPerNet at 512x512 (where stages 1-4 sit at the baselines' strides, its decode",
        "head at the same 128x128 grid as ours at 1024; stage 5 run, as an mmseg backbone would):",
        "",
        "| model | backbone | stages | params, pruned | params, stage 5 kept | params (paper) | GFLOPs | "
        "GFLOPs (paper) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in evidence:
        label = _stages_label(r.stages) + (" (**ours**)" if r.ours else "")
        paper_gflops = "unreadable" if r.paper_gflops is None else f"{r.paper_gflops:g}{r.paper_note}"
        md.append(f"| {r.model} | {r.arch} | {label} | {_vs(r.params_m, r.paper_params_m, PARAMS_TOLERANCE, 'M')} | "
                  f"{_vs(r.params_kept_m, r.paper_params_m, PARAMS_TOLERANCE, 'M')} | {r.paper_params_m:g}M | "
                  f"{_vs(r.gflops, r.paper_gflops, GFLOPS_TOLERANCE, '', r.estimated)} | {paper_gflops} |")
    md += [
        "",
        "The detectors' earlier readings are not traced at 1600x1216 (it would double this command's",
        "time); their GFLOPs (\"about\") are ours with 4x what runs on every pixel of every level (the",
        "neck, RetinaNet's head, the RPN head): one stage earlier every pyramid level sits at half our",
        "stride. Mask R-CNN's RoI heads run on a fixed number of RoIs and cost the same.",
        "",
        conclusion(evidence),
    ]
    return md


def _meets(r: StageReading) -> bool:
    """Parameters (pruned or kept) and, where the paper's cell is readable, GFLOPs within target."""
    params_ok = any(abs(v / r.paper_params_m - 1) <= PARAMS_TOLERANCE for v in (r.params_m, r.params_kept_m))
    gflops_ok = r.paper_gflops is None or (r.gflops is not None and abs(r.gflops / r.paper_gflops - 1)
                                           <= GFLOPS_TOLERANCE)
    return params_ok and gflops_ok


def conclusion(evidence: list[StageReading]) -> str:
    meeting = [r for r in evidence if _meets(r)]
    if all(r.ours for r in meeting) and all(_meets(r) for r in evidence if r.ours):
        return "Only our stage sets meet the targets, in every model and size counted."
    return "Readings that meet the targets: " + "; ".join(
        f"{r.model} {r.arch} stages {_stages_label(r.stages)}{' (ours)' if r.ours else ''}" for r in meeting) + "."


def render(rows: dict, calib: dict, evidence: list, refusal: str) -> str:
    det_size = padded(DET_INPUT)
    md = [
        "# Transfer: our detectors and segmenter beside Tables 4 and 6",
        "",
        "Generated by `python -m pipeline.transfer.counts` down to the marker line at the end; the",
        "part below the marker is written by hand and kept when this command rewrites the page.",
        "",
        "## Parameters and GFLOPs",
        "",
        "Parameters count every weight of the whole model (backbone, neck, all heads, the auxiliary",
        "head included), as mmdetection's and mmsegmentation's `get_flops` report them. GFLOPs are",
        "multiply-adds of one image counted by fvcore (`pipeline/models/flops.py`, the counting of the",
        "backbone tables in docs/model.md, attention products included), over what `get_flops` runs,",
        "the model's `forward_dummy` on one fixed input:",
        "",
        "- **RetinaNet**: backbone + FPN (P3-P7) + RetinaHead on all five levels; no anchors, box",
        "  decoding or NMS.",
        f"- **Mask R-CNN**: backbone + FPN + RPN head on all five levels + box head on {PROPOSALS} proposals",
        f"  (the 1x config's test-time proposal count) + mask head on the first {MASK_ROIS} of them (mmdet's",
        "  `forward_dummy`); no proposal decoding, NMS or mask pasting. RoIAlign counts zero, as in",
        "  mmcv's counter (it has no RoIAlign hook); its bilinear samples would add about",
        f"  {roi_align_gmacs():.2f} G at mmdet's fixed 2x2 samples per bin.",
        "- **UPerNet**: backbone + decode head + the resize of the logits to the input (mmseg's",
        "  `encode_decode`); the auxiliary FCN head does not run at test time and is not counted,",
        "  while its parameters are.",
        "",
        f"Detector input: Table 4's 1600x1200, padded to {det_size[1]}x{det_size[0]} for the total stride"
        f" {TOTAL_STRIDE}, the",
        f"tensor the detectors' transform (`size_divisible={TOTAL_STRIDE}`) feeds the backbone; we count",
        f"{det_size[1]}x{det_size[0]}. 1600x1200 itself cannot be counted: the backbone refuses it",
        f"(\"{refusal.split(';')[0]}\"). Scaled by area, a 1200-row count would be",
        f"{100 * (1 - DET_INPUT[0] / det_size[0]):.1f}% lower than the 1216 one.",
        "",
        f"Targets: parameters within {PARAMS_TOLERANCE:.0%}, GFLOPs within {GFLOPS_TOLERANCE:.0%} of the paper's row"
        " (read from",
        "`pipeline/tracking/paper/table4.yaml` and `table6.yaml`).",
        "",
        "| model | backbone | input (W x H) | params (ours) | params (paper) | diff | target | GFLOPs (ours) "
        "| GFLOPs (paper) | diff | target |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for (kind, arch, size), c in rows.items():
        if kind == "upernet":
            paper = paper_values(6, PAPER_NAMES[arch])
            name = "UPerNet"
        else:
            paper = paper_values(4, PAPER_NAMES[arch], DETECTORS[kind])
            name = DETECTORS[kind]
        pp, pp_cell = _paper_cell(paper, "params_m")
        pg, pg_cell = _paper_cell(paper, "gflops")
        md.append(
            f"| {name} | {arch} | {size[1]}x{size[0]} | {c.params_m:.2f}M | {pp_cell}M | "
            f"{fmt_diff(c.params_m, pp) if pp else '-'} | {_mark(c.params_m, pp, PARAMS_TOLERANCE)} | {c.gflops:.1f} | "
            f"{pg_cell} | {fmt_diff(c.gflops, pg) if pg else '-'} | {_mark(c.gflops, pg, GFLOPS_TOLERANCE)} |"
        )
    md += [*unreadable_notes(rows), "", *which_input(rows), ""]
    md += [
        "Where the GFLOPs go (G; `attention` is the share of the attention products QK^T and AV that",
        "fvcore skips without our handle; `resize` the bilinear / nearest resizes, which fvcore counts",
        "at 1-4 per output element and mmcv's hook-based counter mostly does not see). The last",
        "column is the count a counter blind to the attention products (mmcv's hooks, fvcore without",
        "the handle) would give, against the paper's row.",
        "",
        "| model | backbone | input | parts | attention | resize | without attention |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for (kind, arch, size), c in rows.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in c.parts.items())
        name = "UPerNet" if kind == "upernet" else DETECTORS[kind]
        paper = (paper_values(6, PAPER_NAMES[arch]) if kind == "upernet"
                 else paper_values(4, PAPER_NAMES[arch], DETECTORS[kind]))["values"]["gflops"]
        blind = c.gflops - c.attention
        blind_cell = f"{blind:.1f}" + (f" ({fmt_diff(blind, paper)})" if paper else "")
        md.append(f"| {name} | {arch} | {size[1]}x{size[0]} | {parts} | {c.attention:.1f} | {c.upsample:.2f} | "
                  f"{blind_cell} |")
    md += [
        "",
        attention_verdict(rows, calib),
        "",
        "## The counting checked on a baseline",
        "",
        "The same counting on a Table 4 baseline that timm holds, PVTv2-B2, at the baselines' 800x600",
        "(unpadded, as `get_flops` feeds it; PVTv2 takes any size):",
        "",
        "| model | params (ours) | params (paper) | diff | GFLOPs (ours) | GFLOPs (paper) | diff | without attention |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, c in calib.items():
        paper = paper_values(4, "PVTv2-B2", DETECTORS[kind])["values"]
        blind = c.gflops - c.attention
        md.append(f"| {DETECTORS[kind]} · PVTv2-B2 | {c.params_m:.2f}M | {paper['params_m']:g}M | "
                  f"{fmt_diff(c.params_m, paper['params_m'])} | {c.gflops:.1f} | {paper['gflops']:g} | "
                  f"{fmt_diff(c.gflops, paper['gflops'])} | {blind:.1f} ({fmt_diff(blind, paper['gflops'])}) |")
    md += ["", *stage_section(evidence)]
    md += ["", MARKER, ""]
    return "\n".join(md)


def write(out: Path, generated: str) -> None:
    """Replace the part of `out` above MARKER with `generated` (which ends with the marker line);
    keep what is below it. A file without the marker is refused rather than overwritten, so
    hand-written text cannot be lost."""
    tail = ""
    if out.exists():
        text = out.read_text()
        if MARKER not in text:
            raise ValueError(f"{out} has no marker line {MARKER!r}: refusing to overwrite it (add the line "
                             f"where the hand-written part starts, or delete the file)")
        tail = text.split(MARKER, 1)[1].lstrip("\n")
    if not generated.rstrip("\n").endswith(MARKER):
        raise ValueError("the generated part must end with the marker line")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(generated.rstrip("\n") + "\n" + tail)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "transfer.md")
    ap.add_argument("--sizes", default="s,b", help="comma-separated sizes among s, b")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.sizes.split(",") if k.strip()]
    bad = [k for k in keys if k not in SIZES]
    if bad or not keys:
        raise SystemExit(f"--sizes takes a comma-separated list of {sorted(SIZES)}, got {args.sizes!r}")
    archs = [SIZES[k] for k in keys]
    rows = measure(archs)
    text = render(rows, calibration(), stage_evidence(archs, rows), backbone_refuses(archs[0], DET_INPUT))
    write(args.out, text)
    print(text)
    print(f"\nwrote {args.out} (above the marker)")


if __name__ == "__main__":
    main()
