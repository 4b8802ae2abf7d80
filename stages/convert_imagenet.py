"""Stage convert_imagenet: ImageNet-layout folders -> FFCV betons + manifest.json.

    python -m stages.convert_imagenet                       # the DVC stage: reads data/source/source.json
    python -m stages.convert_imagenet --src DIR --out DIR   # any folder holding train/<wnid>/ and val/<wnid>/
        [--v2 DIR]                      # optional ImageNet-V2 folder (<class index>/*)
        [--max-sides 512 896] [--write-mode proportion] [--compress-probability 0.5]
        [--jpeg-quality 90] [--num-workers 2] [--chunk-size 100] [--checkpoint-every-s 60]
        [--max-unreadable-fraction 0.01] [--work DIR]

The DVC stage runs through the launcher of params.launch, like training: a submitit process
(launcher local) or a SLURM job of the profile's `conversion` kind (launcher slurm), writing
data/ffcv. With --src or --out the conversion runs in this process. Either way a killed run
resumes from the checkpoints in its work folder (--work; default outputs/checkpoints/convert_imagenet
for the stage, <out>.partial with --out).

Settings not given as flags come from data.convert in params.yaml (--params to use another).
Unreadable files are skipped and listed in <out>/manifest.json with the reason; exit status 2
with one `error:` line when the folders cannot be converted as they are, 1 when the job failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages._data_common import log_mlflow, run_cli

# flag -> data.convert key
OVERRIDES = {
    "max_sides": dict(type=int, nargs="+"),
    "write_mode": dict(choices=["raw", "jpg", "smart", "proportion"]),
    "compress_probability": dict(type=float),
    "jpeg_quality": dict(type=int),
    "num_workers": dict(type=int),
    "chunk_size": dict(type=int),
    "checkpoint_every_s": dict(type=float),
    "max_unreadable_fraction": dict(type=float),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--src", default=None, help="ImageNet-layout root holding train/ and val/")
    ap.add_argument("--v2", default=None, help="ImageNet-V2 root holding <class index>/ folders (optional)")
    ap.add_argument("--out", default=None, help="output folder (default data/ffcv)")
    ap.add_argument("--work", default=None, help="where an unfinished conversion keeps its checkpoints")
    ap.add_argument("--metrics", default=None, help="write the stage metrics json here")
    ap.add_argument("--no-mlflow", action="store_true")
    for key, kw in OVERRIDES.items():
        ap.add_argument("--" + key.replace("_", "-"), dest=key, default=None, **kw,
                        help=f"overrides data.convert.{key}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def body() -> int:
        from pipeline.config import ConvertParams, ParamsError, load_params
        from pipeline.data.convert_job import make_convert_spec
        from pipeline.data.scan import source_classes
        from pipeline.data.sources import FFCV_DIR, SOURCE_DIR, Sources, SourceError, partial_dir
        from pydantic import ValidationError

        params = load_params(args.params)
        given = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
        try:
            cfg = ConvertParams.model_validate({**params.data.convert.model_dump(), **given})
        except ValidationError as err:
            raise ParamsError("invalid conversion settings: " + "; ".join(
                f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())) from None
        if args.src:
            src = Sources(Path(args.src) / "train", Path(args.src) / "val", Path(args.v2) if args.v2 else None)
        else:
            record_path = SOURCE_DIR / "source.json"
            if not record_path.is_file():
                raise SourceError(f"{record_path}: not found; run `dvc repro prepare_data` first, or pass --src")
            record = json.loads(record_path.read_text())
            src = Sources(Path(record["train"]), Path(record["val"]), Path(record["v2"]) if record["v2"] else None)
        out = Path(args.out or FFCV_DIR)
        in_process = bool(args.src or args.out)
        work = args.work or (partial_dir(out) if in_process else None)
        spec = make_convert_spec(params, cfg, src, out, metrics_file=args.metrics, work=work)
        source_classes(src)  # the class folders, before anything is launched (seconds)
        metrics = spec.work() if in_process else _launch(spec)
        if metrics is None:
            return 1
        if "error" in metrics:  # the folders cannot be converted as they are: one line, as run_cli prints
            print(f"error: {metrics['error']}", file=sys.stderr)
            return 2
        manifest = json.loads((out / "manifest.json").read_text())
        if not args.no_mlflow:
            log_mlflow("convert_imagenet", {"source": {"train": str(src.train), "val": str(src.val), "v2": str(src.v2)},
                                            "data": {"convert": cfg.model_dump()}}, metrics)
        for name, split in manifest["splits"].items():
            print(f"{name}: {split['images']} images in {len(split['per_class'])} classes, "
                  f"{len(split['skipped'])} skipped -> {', '.join(str(out / b) for b in split['betons'].values())}")
            for s in split["skipped"]:
                print(f"  skipped {s['path']}: {s['reason']}")
        print(f"manifest: {out / 'manifest.json'} ({metrics['images_per_s']} images/s, {metrics['workers']} workers)")
        return 0

    return run_cli(body)


def _launch(spec) -> dict | None:
    """Run the stage's job through params.launch; None (after printing why) when it failed."""
    from pipeline.launch.cluster import SubmissionError
    from pipeline.launch.local import LaunchError, watch_parent
    from pipeline.slurm_profiles import ProfileError
    from pipeline.launch.slurm import SlurmJobError
    from pipeline.launch.stage import StageError, run_stage

    if spec.params.launch.launcher == "local":
        watch_parent()  # `dvc repro` killed: stop too, and the job follows (it watches this pid)
    try:
        return run_stage(spec)
    except (LaunchError, SlurmJobError, SubmissionError, ProfileError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)  # the message carries the job's log tail
        return None


if __name__ == "__main__":
    sys.exit(main())
