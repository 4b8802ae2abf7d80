"""What differs between the COCO and ADE20K stages, behind one small interface the loop drives
(pipeline/transfer/loop.py): the model, the data, the loss of one batch, the learning-rate
schedule, when and how to evaluate, and the metric keys of Tables 4 and 6.

COCO (mmdet 1x): epochs of the training set, linear warm-up over `warmup_iters` iterations from
`warmup_ratio` x lr, then x`lr_gamma` at each of `lr_steps` (epochs); evaluated after every
epoch (mmdet's interval 1), pycocotools on the whole val set.
ADE20K (mmseg 160k): iterations, linear warm-up over `warmup_iters`, then poly decay with power
`poly_power` (1.0: linear, 5.3) to `min_lr`; evaluated every `eval_every_iters` and at the end,
single-scale mIoU on the whole val set.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from pipeline.train.collectives import all_gather, gather_objects

DETECTION_KEYS = {"retinanet": ("ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box"),
                  "maskrcnn": ("ap_box", "ap50_box", "ap75_box", "aps_box", "apm_box", "apl_box", "ap_mask",
                               "ap50_mask", "ap75_mask")}


def _warmup(it: int, warmup_iters: int, ratio: float) -> float:
    if it >= warmup_iters:
        return 1.0
    return ratio + (1.0 - ratio) * it / warmup_iters  # mmcv's linear warm-up


class DetectionTask:
    kind = "detection"
    experiment = "table4-coco"

    def __init__(self, spec):
        self.spec = spec
        self.recipe = spec.recipe
        self.model_name = spec.run.model
        self.metric_keys = DETECTION_KEYS[self.model_name]

    def build_model(self) -> nn.Module:
        from .detection import build_detector

        loader = self.spec.params.data.loader
        return build_detector(self.model_name, self.spec.arch, min_size=self.recipe.min_size,
                              max_size=self.recipe.max_size, mean=loader.mean, std=loader.std,
                              drop_path_rate=self.spec.run.drop_path_rate, roi_batch_size=self.recipe.roi_batch_size)

    def datasets(self):
        from .coco import CocoDetection

        root, masks, r = self.spec.data_root, self.model_name == "maskrcnn", self.recipe
        common = dict(masks=masks, seed=self.spec.run.seed,
                      max_unusable_fraction=self.spec.params.transfer.max_unusable_fraction)
        train = CocoDetection(root, "train", train=True, hflip=r.hflip, **common)
        val = CocoDetection(root, "val", train=False, hflip=0.0, **common)
        return train, val

    def collate(self, batch):
        from .coco import collate

        return collate(batch)

    def iters_per_epoch(self, n_train: int) -> int:
        n = math.ceil(n_train / self.recipe.batch_size)
        return min(n, self.recipe.max_iters_per_epoch or n)

    def total_iters(self, ipe: int) -> int:
        return self.recipe.epochs * ipe

    def lr_factor(self, it: int, ipe: int) -> float:
        r = self.recipe
        epoch = it // ipe
        return _warmup(it, r.warmup_iters, r.warmup_ratio) * r.lr_gamma ** sum(epoch >= s for s in r.lr_steps)

    def loss(self, model, batch, device) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        if self.model_name == "maskrcnn":  # Mask R-CNN's class 0 is the background
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
        parts = model(images, targets)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    def eval_due(self, it: int, ipe: int, total: int) -> bool:
        return it % ipe == 0 or it == total

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val, device, rank: int, world: int) -> dict | None:
        """COCO APs (%) on the whole val set: each rank detects a share, rank 0 scores them all."""
        from .coco import coco_results, evaluate
        from .detection import LABEL_OFFSET

        model.eval()
        masks = self.model_name == "maskrcnn"
        results = []
        shard = list(range(rank, len(val), world))
        bs = self.recipe.eval_batch_size
        for start in range(0, len(shard), bs):
            images, targets = self.collate([val[i] for i in shard[start:start + bs]])
            outputs = model([im.to(device) for im in images])
            outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]
            results += coco_results(outputs, [t["image_id"] for t in targets], masks=masks,
                                    label_offset=LABEL_OFFSET[self.model_name])
        model.train()
        results = gather_objects(results)
        if rank != 0:
            return None
        ann = Path(self.spec.data_root) / "annotations" / "instances_val2017.json"
        scores = evaluate(ann, results, ["bbox", "segm"] if masks else ["bbox"])
        # COCOeval's -1: no ground truth in that area range (a small val set): not a score
        return {k: (scores[k] if scores[k] >= 0 else float("nan")) for k in self.metric_keys}


class SegmentationTask:
    kind = "segmentation"
    experiment = "table6-ade20k"
    metric_keys = ("miou",)

    def __init__(self, spec):
        self.spec = spec
        self.recipe = spec.recipe

    def build_model(self) -> nn.Module:
        from .segmentation import UPerNet

        return UPerNet(self.spec.arch, drop_path_rate=self.spec.run.drop_path_rate)

    def datasets(self):
        from .ade20k import ADE20K

        loader, r = self.spec.params.data.loader, self.recipe
        common = dict(recipe=r, mean=loader.mean, std=loader.std, seed=self.spec.run.seed,
                      max_unusable_fraction=self.spec.params.transfer.max_unusable_fraction)
        return (ADE20K(self.spec.data_root, "training", train=True, **common),
                ADE20K(self.spec.data_root, "validation", train=False, **common))

    def collate(self, batch):
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])

    def iters_per_epoch(self, n_train: int) -> int:
        return max(1, n_train // self.recipe.batch_size)  # mmseg's infinite sampler: epochs only reshuffle

    def total_iters(self, ipe: int) -> int:
        return self.recipe.iters

    def lr_factor(self, it: int, ipe: int) -> float:
        r = self.recipe
        poly = (1.0 - it / r.iters) ** r.poly_power
        floor = r.min_lr / r.lr
        return _warmup(it, r.warmup_iters, r.warmup_ratio) * ((1.0 - floor) * poly + floor)

    def loss(self, model, batch, device) -> tuple[torch.Tensor, dict[str, float]]:
        from .ade20k import IGNORE

        images, labels = (t.to(device, non_blocking=True) for t in batch)
        logits, aux = model(images)
        main = nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE)
        aux_loss = nn.functional.cross_entropy(aux, labels, ignore_index=IGNORE)
        parts = {"loss_seg": float(main.detach()), "loss_aux": float(aux_loss.detach())}
        return main + self.recipe.aux_weight * aux_loss, parts

    def eval_due(self, it: int, ipe: int, total: int) -> bool:
        return it % self.recipe.eval_every_iters == 0 or it == total

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val, device, rank: int, world: int) -> dict | None:
        """Single-scale mIoU (%) on the whole val set, each image at its own size: every rank scores
        a share, and the metric sums the confusion matrices across ranks."""
        from .ade20k import MIoU, NUM_CLASSES

        model.eval()
        meter = MIoU(num_classes=NUM_CLASSES, dist_sync_fn=all_gather)  # its sync through our collectives
        for i in range(rank, len(val), world):
            image, label = val[i]
            logits, _ = model(image[None].to(device))
            logits = nn.functional.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
            meter.update(logits.argmax(1)[0].cpu(), label)
        model.train()
        miou = float(meter.compute()["miou"])  # collective when distributed
        return {"miou": miou} if rank == 0 else None


def make_task(spec):
    return SegmentationTask(spec) if spec.run.model == "upernet" else DetectionTask(spec)
