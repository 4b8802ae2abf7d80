"""Stages prepare_coco / prepare_ade20k: the built-in COCO / ADE20K set, or a record of the real one.

    python -m stages.prepare_transfer {coco,ade20k} [--params params.yaml] [--out data/<task>]
        [--metrics metrics/prepare_<task>.json] [--workers N] [--no-mlflow]

With transfer.<task> null (profile builtin only) it generates the built-in set under
<out>/builtin; with a path it checks the real layout and records it. Either way it scans the set
as the transfer stages will read it (train and val settings) and writes:

    <out>/source.json     {"kind": "builtin" | "path", "root": where the transfer stages read}
    <out>/manifest.json   the scan's counts per split (dropped files and annotations, by reason)

Neither file carries a timestamp or a duration, so a rerun writes the same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from stages._data_common import log_mlflow, write_metrics

# What each real root must hold (COCO 2017, ADEChallengeData2016).
LAYOUTS = {
    "coco": ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017/", "val2017/"),
    "ade20k": ("images/training/", "images/validation/", "annotations/training/", "annotations/validation/"),
}
# The normalisation the segmentation models use; only the scan's constructor needs one here.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resolve_root(params, task: str, out: Path):
    """(kind, root): the built-in set's folder, or the configured path checked against LAYOUTS."""
    from pipeline.config import ParamsError

    path = getattr(params.transfer, task)
    if path is None:
        if params.profile == "paper":
            raise ParamsError(f"profile 'paper' needs the real dataset: set transfer.{task} in params.yaml "
                              f"(the root holding {', '.join(LAYOUTS[task])})")
        return "builtin", out / "builtin"
    root = Path(path)
    missing = [p for p in LAYOUTS[task] if not ((root / p).is_dir() if p.endswith("/") else (root / p).is_file())]
    if missing:
        from pipeline.transfer.coco import TransferDataError

        raise TransferDataError(f"transfer.{task} = {path!r}: missing {', '.join(missing)}")
    return "path", root


def scan(task: str, root: Path, params) -> dict:
    """The datasets' own scans with the transfer stages' train and val settings, per split: the
    counts by reason, and under `examples` up to five files or annotations for each reason."""
    frac = params.transfer.max_unusable_fraction
    out = {}
    if task == "coco":
        from pipeline.transfer.coco import CocoDetection

        for split in ("train", "val"):
            # masks=True: Mask R-CNN's reading checks the segmentations too (RetinaNet's is a subset).
            ds = CocoDetection(root, split, masks=True, train=split == "train", max_unusable_fraction=frac)
            out[split] = {**ds.manifest, "examples": ds.examples}
        return out
    from pipeline.config import SegmentationRecipe
    from pipeline.transfer.ade20k import ADE20K

    # The scan reads no augmentation setting: the default recipe keeps the stage's params to the
    # data keys, so changing a training knob does not rerun it.
    recipe = SegmentationRecipe()
    for split in ("training", "validation"):
        ds = ADE20K(root, split, train=split == "training", recipe=recipe, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    max_unusable_fraction=frac)
        out[split] = {**ds.scan_label_ids(), "examples": ds.examples}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=sorted(LAYOUTS))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None, help="output folder (default data/<task>)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    ap.add_argument("--metrics", default=None, help="write the stage metrics json here")
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)

    from pipeline.config import ParamsError, load_params
    from pipeline.transfer import builtin
    from pipeline.transfer.coco import TransferDataError

    try:
        params = load_params(args.params)
        out = Path(args.out or f"data/{args.task}")
        start = time.time()
        kind, root = resolve_root(params, args.task, out)
        cfg = getattr(params.transfer.builtin, args.task)
        if kind == "builtin":
            generate = builtin.generate_coco if args.task == "coco" else builtin.generate_ade20k
            generate(cfg, params.transfer.builtin.seed, root, workers=args.workers)
        else:
            shutil.rmtree(out / "builtin", ignore_errors=True)  # a built-in set from before is stale
        manifest = scan(args.task, root, params)
    except (ParamsError, TransferDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    out.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "root": str(root)}
    (out / "source.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    metrics = {"kind": kind, **{f"{k}_{split}": v for split, m in manifest.items() for k, v in m.items()
                                if k != "examples"}}
    write_metrics(args.metrics, metrics)
    if not args.no_mlflow:
        logged = {"profile": params.profile, "transfer": {
            args.task: getattr(params.transfer, args.task), "max_unusable_fraction": params.transfer.max_unusable_fraction,
            "builtin": {"seed": params.transfer.builtin.seed, args.task: cfg.model_dump()}}}
        log_mlflow(f"prepare_{args.task}", logged, {**metrics, "seconds": round(time.time() - start, 1)})
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
