"""How far the EMA teacher's pooled class map AvgPool(softmax(P)), EMA distillation's target, is
the teacher's own prediction, for two readings of "the head with its pooling removed" on one
trained stage (docs/training.md, "The teacher's map"):

  class-attention  every location in the class token's place (HiriViT.dense_head, what training uses)
  tokens           the norm and classifier on each location's token, bypassing the class-attention block

    python bench/teacher_map.py            # after `dvc repro train_hiri_s_448`, at the repo root
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

import pipeline.models  # noqa: F401  (registers hiri_vit_*)
from pipeline.config import load_params
from pipeline.train.data import ProjectData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--stage", default="train_hiri_s_448")
    args = ap.parse_args()
    ckpt = torch.load(args.repo / "outputs" / args.stage / "model.pt", map_location="cpu", weights_only=True)
    teacher = timm.create_model(ckpt["arch"], img_size=ckpt["img_size"], num_classes=ckpt["num_classes"])
    teacher.load_state_dict(ckpt["state_dict_ema"])
    teacher.eval()
    data = ProjectData(load_params(args.repo / "params.yaml"), ckpt["img_size"], args.repo / "data" / "ffcv")
    n, own_correct = 0, 0
    tally = {"class-attention": [0, 0], "tokens": [0, 0]}  # [map correct, agrees with the teacher]
    with torch.no_grad():
        for x, y in data.evaluation("val", 50):
            features = teacher.forward_features(x)
            own = teacher.forward_head(features).argmax(1)
            for reading, pool in (("class-attention", "token"), ("tokens", "avg")):
                teacher.global_pool = pool  # 'avg' makes dense_head skip the class-attention block
                pooled_map = teacher.dense_head(features).softmax(1).mean((2, 3)).argmax(1)
                tally[reading][0] += int(pooled_map.eq(y).sum())
                tally[reading][1] += int(pooled_map.eq(own).sum())
            teacher.global_pool = "token"
            n += len(y)
            own_correct += int(own.eq(y).sum())
    print(f"{args.stage}: EMA teacher, {n} val images, its own Top-1 {100 * own_correct / n:.1f}%\n")
    print("| reading | map Top-1 (%) | agrees with the teacher (%) |\n| --- | ---: | ---: |")
    for reading, (correct, agree) in tally.items():
        print(f"| {reading} | {100 * correct / n:.1f} | {100 * agree / n:.1f} |")


if __name__ == "__main__":
    main()
