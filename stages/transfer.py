"""Transfer stages: `python -m stages.transfer <stage>` fine-tunes a detector or segmenter on a
pretrained HIRI-ViT (DVC stages coco_retinanet_hiri_{s,b}, coco_maskrcnn_hiri_{s,b},
ade20k_upernet_hiri_{s,b}; each is a key of transfer.runs in params.yaml).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", help="stage name, e.g. coco_maskrcnn_hiri_s")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = ap.parse_args(argv)

    from pipeline.config import ParamsError, load_params
    from pipeline.transfer.run import TransferError, make_transfer_spec

    try:
        params = load_params(args.params)
        spec = make_transfer_spec(params, args.stage)
    except (ParamsError, TransferError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pipeline.launch.cluster import SubmissionError
    from pipeline.launch.local import LaunchError, watch_parent
    from pipeline.slurm_profiles import ProfileError
    from pipeline.launch.slurm import SlurmJobError
    from pipeline.launch.stage import StageError, run_stage

    if params.launch.launcher == "local":
        watch_parent()  # `dvc repro` killed: stop too, and the workers follow
    try:
        run_stage(spec)
    except (LaunchError, SlurmJobError, SubmissionError, ProfileError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
