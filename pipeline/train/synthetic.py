"""A tiny in-memory, learnable image set for tests and benchmarks of the training machinery.

Each class has its own mean colour plus noise, so a few steps move the loss. Batches are
deterministic in (seed, epoch); the micro-batches of an epoch are cut from one permutation and
dealt to the ranks in turn (micro-batch i goes to rank i mod world), so that W ranks x A
accumulation steps see exactly the micro-batches that 1 rank x (W * A) accumulation steps sees,
BatchNorm statistics included. That is what the ZeRO-2 "2 processes == 1 process" test needs.
"""
from __future__ import annotations

import os

import torch


def make_images(n: int, num_classes: int, img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    palette = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234)) * 2 - 1
    images = palette[labels] + 0.5 * torch.randn(n, 3, img_size, img_size, generator=g)
    return images, labels


class SyntheticTrain:
    def __init__(self, images, labels, micro_batch: int, seed: int, rank: int, world_size: int):
        self.images, self.labels = images, labels
        self.micro_batch, self.seed, self.rank, self.world = micro_batch, seed, rank, world_size
        self.epoch = 0
        self.nan_at: int | None = None

    def __len__(self) -> int:  # micro-batches per rank per epoch
        return len(self.labels) // self.micro_batch // self.world

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.epoch = epoch  # the order derives from (the set's own seed, epoch)

    def __iter__(self):
        perm = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        for i in range(len(self)):
            chunk = i * self.world + self.rank
            idx = perm[chunk * self.micro_batch:(chunk + 1) * self.micro_batch]
            x = self.images[idx].clone()
            if self.epoch == 0 and i == self.nan_at:
                x.fill_(float("nan"))
            yield x, self.labels[idx].clone()


class SyntheticEval:
    def __init__(self, images, labels, batch: int):
        self.images, self.labels, self.batch = images, labels, batch

    def __iter__(self):
        for i in range(0, len(self.labels), self.batch):
            yield self.images[i:i + self.batch], self.labels[i:i + self.batch]


class SyntheticData:
    def __init__(self, img_size: int, num_classes: int = 4, n_train: int = 32, n_val: int = 16, seed: int = 0,
                 nan_at_step: int | None = None, fail_final_eval: str | None = None):
        self.num_classes = num_classes
        self.nan_at_step = nan_at_step  # poison the images of this (0-based) micro-batch of epoch 0
        # while this file exists, the final evaluation (split v2) fails once and removes it: a crash
        # after training
        self.fail_final_eval = fail_final_eval
        self.train_set = make_images(n_train, num_classes, img_size, seed)
        self.val_set = make_images(n_val, num_classes, img_size, seed + 1)

    def train(self, micro_batch: int, seed: int, world_size: int, device=None):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        train = SyntheticTrain(*self.train_set, micro_batch, seed, rank, world_size)
        train.nan_at = self.nan_at_step
        return train

    def evaluation(self, split: str, batch: int, rank: int = 0, world: int = 1):
        if split == "v2" and self.fail_final_eval and os.path.exists(self.fail_final_eval):
            os.unlink(self.fail_final_eval)
            raise RuntimeError("the final evaluation failed (SyntheticData.fail_final_eval)")
        images, labels = self.val_set  # "val" and "v2" share the held-out images
        return SyntheticEval(images[rank::world], labels[rank::world], batch)


def from_spec(spec) -> SyntheticData:
    """data_factory entry point: options from spec.data_overrides."""
    return SyntheticData(spec.run.img_size, **spec.data_overrides)


# --- whole runs on synthetic data (tests, benchmarks) ---------------------------------------------

def smoke_params(img_size: int = 224, tasks: int = 1, model: str = "hiri_vit_s", drop_path_rate: float = 0.0,
                 seed: int = 0, **recipe):
    """Params for a tiny run `train_t` of a real model (fp32, so results compare across runs)."""
    from pipeline.config import (FinetuneParams, LaunchParams, Params, RecipeParams, TrainParams, TrainRun,
                                 TransferParams)

    base = dict(epochs=2, warmup_epochs=0.5, batch_size=4, micro_batch_size=2, lr=1e-3, lr_reference_batch=4,
                checkpoint_every_steps=1, log_every_steps=1, eval_batch_size=8, throughput_batch=2,
                throughput_iters=1, precision="fp32")
    base.update(recipe)
    for key in ("mix", "ema"):
        if isinstance(base.get(key), dict):
            from pipeline.config import EmaParams, MixParams

            base[key] = (MixParams if key == "mix" else EmaParams)(**base[key])
    run = TrainRun(model=model, img_size=img_size, drop_path_rate=drop_path_rate, seed=seed)
    return Params(train=TrainParams(builtin=RecipeParams(**base), runs={"t": run}), finetune=FinetuneParams(runs={}),
                  transfer=TransferParams(runs={}), launch=LaunchParams(tasks=tasks))


def smoke_spec(root, params, **data):
    from pipeline.train.stage import make_spec

    return make_spec(params, "train", "t", repo_root=root, data_factory="pipeline.train.synthetic:from_spec",
                     data_overrides=data)


def main(argv=None) -> int:
    """python -m pipeline.train.synthetic ROOT JSON: run `train_t` in ROOT with smoke_params(**JSON),
    data options under the JSON key "data"."""
    import json
    import sys

    from pipeline.launch.stage import run_stage

    argv = sys.argv[1:] if argv is None else argv
    root, cfg = argv[0], json.loads(argv[1])
    data = cfg.pop("data", {})
    metrics = run_stage(smoke_spec(root, smoke_params(**cfg), **data))
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
