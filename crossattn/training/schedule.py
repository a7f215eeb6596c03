"""Learning rate per step, computed once in Python and handed to both twins.

Warmup rises linearly from lr/warmup_steps to lr over the warmup epochs; then
constant, cosine (to min_lr at the last step) or step decay (x step_gamma every
step_epochs epochs, counted from the start of training).
"""

from __future__ import annotations

import math

import numpy as np

from crossattn.training.config import TrainConfig


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step `step` (0-based)."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        return config.lr * config.step_gamma ** (step // steps_per_epoch // config.step_epochs)
    span = max(total - warmup - 1, 1)
    progress = min((step - warmup) / span, 1.0)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_table(config: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """Every step's learning rate (float64), for plots and tests."""
    return np.array([lr_at(config, s, steps_per_epoch) for s in range(config.epochs * steps_per_epoch)])
