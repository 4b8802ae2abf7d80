"""Transfer benchmark: training iterations/s and inference images/s of RetinaNet, Mask R-CNN and
UPerNet on HIRI-ViT, each beside the same detector / segmenter on a baseline backbone of the field
(PVTv2-B2, timm `features_only`) at the baselines' half-size input, as the paper compares them
(Table 4: 1600x1200 against 800x600; Table 6: HIRI-ViT counted at 1024x1024 against 512x512).

Both sides are built by the transfer code itself (`build_detector`, `UPerNet`, with the baseline's
timm model as `body`) and random-initialised. A training iteration is the stages' step on a batch
of `--batch` synthetic images with a few boxes / masks / a label map each: forward with targets,
the summed losses backward, an AdamW step. Inference is the test-time path: for the detectors the
whole torchvision model (transform, backbone, heads, decoding, NMS, mask pasting) with the score
threshold at 0 so that every image carries 100 detections through NMS and the mask head, as a
trained model's do (a random one's scores fall below the usual 0.05); for UPerNet mmseg's
`encode_decode` (backbone, decode head, resize; no auxiliary head). The baseline's padding is its
own total stride, 32, as mmdet pads (ours 64).

Every model is warmed up, then timed once per round (models interleaved, so a passing load hits
all alike); the table shows medians.

    python bench/transfer.py                        # CPU: smaller inputs (the table says which)
    python bench/transfer.py --device cuda          # the paper's inputs
    python bench/transfer.py --models retinanet --iters 5 --warmup 2 --det-size 1600x1200
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from bench.throughput import measure_interleaved  # noqa: E402
from pipeline.transfer.counts import UPerNetDummy  # noqa: E402
from pipeline.transfer.detection import LABEL_OFFSET, NUM_CLASSES, build_detector  # noqa: E402
from pipeline.transfer.segmentation import NUM_CLASSES as SEG_CLASSES  # noqa: E402
from pipeline.transfer.segmentation import UPerNet  # noqa: E402

MODELS = ("retinanet", "maskrcnn", "upernet")
NAMES = {"retinanet": "RetinaNet", "maskrcnn": "Mask R-CNN", "upernet": "UPerNet"}
BASELINE = "pvt_v2_b2"
# The baseline's maps for each head, as its mmdet/mmseg configs take them: C3-C5 for RetinaNet,
# C2-C5 for the FPN and UPerNet. HIRI-ViT's are one stage later (STAGES), at twice the input.
BASELINE_INDICES = {"retinanet": (1, 2, 3), "maskrcnn": (0, 1, 2, 3), "upernet": (0, 1, 2, 3)}
BASELINE_STRIDE = 32
# The paper's inputs (on a GPU) and the smaller defaults on a CPU, where the paper's would take
# minutes per iteration: (W, H) for detection, the side for segmentation; baselines at half.
DET_SIZE = {"cuda": (1600, 1200), "cpu": (800, 600)}
SEG_SIZE = {"cuda": 1024, "cpu": 512}
AUX_WEIGHT = 0.4  # mmseg's auxiliary FCN head, as the ADE20K recipe
OBJECTS_PER_IMAGE = 4


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 1600x1200, got {text!r}") from None
    return w, h


def synthetic_targets(kind: str, n: int, size: tuple[int, int], g: torch.Generator) -> list[dict]:
    """`n` images' targets: a few boxes of 1/16 to 1/2 of the short side, their box masks."""
    w, h = size
    out = []
    for _ in range(n):
        side = min(w, h) * (1 / 16 + torch.rand(OBJECTS_PER_IMAGE, 2, generator=g) * (1 / 2 - 1 / 16))
        xy = torch.rand(OBJECTS_PER_IMAGE, 2, generator=g) * (torch.tensor([w, h]) - side)
        boxes = torch.cat([xy, xy + side], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (OBJECTS_PER_IMAGE,), generator=g) + LABEL_OFFSET[kind]
        target = {"boxes": boxes, "labels": labels}
        if kind == "maskrcnn":
            masks = torch.zeros(OBJECTS_PER_IMAGE, h, w, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist()):
                m[y1:y2, x1:x2] = 1
            target["masks"] = masks
        out.append(target)
    return out


def build(kind: str, arch: str, det_size: tuple[int, int], body: torch.nn.Module | None) -> torch.nn.Module:
    if kind == "upernet":
        return UPerNet(arch, body=body)
    w, h = det_size
    # min/max size = the input's sides: the transform keeps the image as it is and only pads
    det = build_detector(kind, arch, min_size=min(w, h), max_size=max(w, h), mean=IMAGENET_DEFAULT_MEAN,
                         std=IMAGENET_DEFAULT_STD, body=body)
    if body is not None:
        det.transform.size_divisible = BASELINE_STRIDE
    # every image carries its 100 detections through NMS (and Mask R-CNN's mask head), as a
    # trained model's do; a random model's scores sit below the recipes' 0.05
    if kind == "retinanet":
        det.score_thresh = 0.0
    else:
        det.roi_heads.score_thresh = 0.0
    return det


def steps_for(kind: str, arch: str, size, body, batch: int, device: torch.device, seed: int = 0):
    """(train step, inference step, the strides of the maps its neck takes); the steps return seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build(kind, arch, size if kind != "upernet" else None, body).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if kind == "upernet":
        x = torch.rand(batch, 3, size, size, generator=g).to(device)
        y = torch.randint(0, SEG_CLASSES, (batch, size, size), generator=g).to(device)
        dummy = UPerNetDummy(model)

        def loss_fn():
            logits, aux = model(x)
            ce = torch.nn.functional.cross_entropy
            return ce(logits, y, ignore_index=255) + AUX_WEIGHT * ce(aux, y, ignore_index=255)

        def infer():
            dummy(x)
    else:
        images = [t.to(device) for t in torch.rand(batch, 3, size[1], size[0], generator=g)]
        targets = [{k: v.to(device) for k, v in t.items()} for t in synthetic_targets(kind, batch, size, g)]

        def loss_fn():
            return sum(model(images, targets).values())

        def infer():
            model(images)

    def train_step() -> float:
        model.train()
        sync()
        t0 = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - t0

    def infer_step() -> float:
        model.eval()
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            infer()
            sync()
            return time.perf_counter() - t0

    body = model.backbone if kind == "upernet" else model.backbone.body
    return train_step, infer_step, body.feature_info.reduction()


def baseline_body(kind: str) -> torch.nn.Module:
    return timm.create_model(BASELINE, features_only=True, out_indices=BASELINE_INDICES[kind])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="hiri_vit_s", help="the HIRI-ViT size (hiri_vit_s / hiri_vit_b)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated among {', '.join(MODELS)}")
    ap.add_argument("--iters", type=int, default=3, help="timed rounds (each times every model once)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per model first")
    ap.add_argument("--batch", type=int, default=2, help="images per iteration (the recipes' 2 per GPU)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads; on a machine shared with other jobs 1 can be several times faster than "
                         "2 (OpenMP threads spin waiting for a busy core)")
    ap.add_argument("--det-size", type=parse_size, help="HIRI-ViT detection input WxH (baseline: half); "
                    "default 1600x1200 on cuda, 800x600 on cpu")
    ap.add_argument("--seg-size", type=int, help="HIRI-ViT UPerNet input side (baseline: half); default 1024 "
                    "on cuda, 512 on cpu")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MODELS]
    if bad or not kinds:
        raise SystemExit(f"--models takes a comma-separated list of {MODELS}, got {args.models!r}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    where = "cuda" if device.type == "cuda" else "cpu"
    det_size = args.det_size or DET_SIZE[where]
    seg_size = args.seg_size or SEG_SIZE[where]

    rows, train, infer = [], {}, {}
    for kind in kinds:
        ours = det_size if kind != "upernet" else seg_size
        half = (ours[0] // 2, ours[1] // 2) if kind != "upernet" else ours // 2
        for arch, size, body in ((args.arch, ours, None), (BASELINE, half, baseline_body(kind))):
            key = (kind, arch)
            train[key], infer[key], strides = steps_for(kind, arch, size, body, args.batch, device)
            label = f"{size[0]}x{size[1]}" if kind != "upernet" else f"{size}x{size}"
            rows.append((key, label, f"{strides[0]}-{strides[-1]}"))
            print(f"  built {NAMES[kind]} on {arch} @ {label}", file=sys.stderr, flush=True)
    # measure_interleaved reports batch / median seconds: images/s
    train_ips = measure_interleaved(train, args.batch, args.warmup, args.iters)
    infer_ips = measure_interleaved(infer, args.batch, args.warmup, args.iters)

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"cpu, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}")
    sizes = "the paper's inputs" if (det_size, seg_size) == (DET_SIZE["cuda"], SEG_SIZE["cuda"]) else \
        f"smaller inputs than the paper's 1600x1200 / 1024x1024 (here {det_size[0]}x{det_size[1]} / {seg_size}x{seg_size})"
    print(f"\nTransfer benchmark ({machine}; batch {args.batch}; {sizes}, baselines at half; random init, fp32; "
          f"median of {args.iters} interleaved rounds after {args.warmup} warm-up; torch {torch.__version__})\n")
    print("| model | backbone | map strides | input (W x H) | train it/s | inference img/s |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for key, label, stages in rows:
        kind, arch = key
        print(f"| {NAMES[kind]} | {arch} | {stages} | {label} | {train_ips[key] / args.batch:.3f} | "
              f"{infer_ips[key]:.2f} |")


if __name__ == "__main__":
    main()
