"""Training: the DeepSpeed-driven loop, EMA distillation (Section 4.5), evaluation, checkpoints.

One module per job: `mixing` (timm Mixup/CutMix that also reports the box it drew),
`ema_distill` (teacher targets), `engine` (DeepSpeed initialisation), `schedule` (learning rate),
`checkpoint` (atomic save and resume), `evaluate` (Top-1/Top-5, cost), `progress` (progress
lines), `loop` (the epoch loop that ties them together) and `run` (one whole training run).
"""
