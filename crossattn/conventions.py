"""Convention differences between the frameworks, translated in one place.

Twins build their layers through these values so that both sides agree by
construction rather than by tolerance.
"""

from __future__ import annotations

import numpy as np

#: torch's BatchNorm momentum weighs the *new* batch statistic ...
BN_MOMENTUM_TORCH = 0.1
#: ... paddle's weighs the *old* running value: paddle 0.9 == torch 0.1.
BN_MOMENTUM_PADDLE = 1.0 - BN_MOMENTUM_TORCH
#: paddle holds norm epsilons as float32 attributes; choosing values exactly
#: representable in float32 makes both twins add the very same epsilon in any
#: dtype (with a plain 1e-5, float64 checks drift by up to 1e-8 where a
#: channel's variance is small)
BN_EPSILON = float(np.float32(1e-5))
LN_EPSILON = float(np.float32(1e-5))


def as_paddle_holds(value: float) -> float:
    """A hyperparameter as paddle applies it: rounded to float32.

    paddle's Momentum optimizer keeps its mu and its weight-decay coefficient as
    float32 attributes even when training in float64 (its Adam does not: measured,
    rounding Adam's betas makes the runs differ more). Handing torch the same
    rounded values makes both optimizers take the same steps: with momentum 0.9,
    float64 runs otherwise drift apart by 3e-7 in 20 steps, with it by 3e-15.
    """
    return float(np.float32(value))


#: paddle keeps its BatchNorm momentum as a float32 attribute, so in float64 its
#: running statistics move by float32(0.9), not 0.9 (a 2e-8 relative offset)
PADDLE_BN_MOMENTUM_EFFECTIVE = float(np.float32(BN_MOMENTUM_PADDLE))


def replay_running_stats(mean: np.ndarray, var: np.ndarray, calls: list[tuple[np.ndarray, np.ndarray, int]],
                         framework: str, new_weight: float | None = BN_MOMENTUM_TORCH,
                         tracked: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Running statistics a framework's BatchNorm holds after seeing `calls`.

    Each call is (batch mean, biased batch variance, values per channel n);
    `new_weight` is the layer's momentum as torch states it (the weight of the
    batch: paddle's 1 - momentum). torch folds in the unbiased variance
    b n/(n-1) with that weight (None: a cumulative average over `tracked`
    earlier batches and these); paddle the biased one, keeping its momentum
    held in float32. Replaying per call also covers a BatchNorm that runs more
    than once in a forward pass.
    """
    for index, (batch_mean, batch_var, count) in enumerate(calls, start=1):
        if framework == "torch":
            m = 1.0 / (tracked + index) if new_weight is None else new_weight
            mean = (1.0 - m) * mean + m * batch_mean
            var = (1.0 - m) * var + m * batch_var * count / max(count - 1, 1)
        else:
            keep = paddle_keep(new_weight)
            mean = keep * mean + (1.0 - keep) * batch_mean
            var = keep * var + (1.0 - keep) * batch_var
    return mean, var


def paddle_keep(new_weight: float | None) -> float:
    """The fraction of its running statistics paddle keeps per batch: its momentum, held in float32."""
    return float(np.float32(1.0 - (BN_MOMENTUM_TORCH if new_weight is None else new_weight)))


def same_bn_update(torch_weight: float | None, paddle_weight: float) -> bool:
    """Whether a torch and a paddle BatchNorm fold a batch in alike: paddle applies its momentum in float32,
    so only float32(1 - torch's momentum) can be its counterpart; torch's cumulative average has none."""
    return torch_weight is not None and paddle_keep(torch_weight) == paddle_keep(paddle_weight)


from crossattn.bn_stats import BN_STATS_DEFAULT, BN_STATS_RULES, bn_stats_rule, shared_bn_rule  # noqa: E402,F401


def bn_stats_update(rule: str, new_weight: float) -> tuple[float, float, bool]:
    """(keep, new, unbiased) of `running = keep * running + new * batch` under `rule`.

    `new_weight` is the layer's momentum as torch states it (the weight of the
    batch statistic: torch's `momentum`, paddle's `1 - momentum`). Only the
    non-native side of a rule calls this; the native side runs its own kernel,
    whose arithmetic these coefficients reproduce.
    """
    if rule == "torch":
        return 1.0 - new_weight, new_weight, True
    if rule == "paddle":
        keep = float(np.float32(1.0 - new_weight))
        return keep, 1.0 - keep, False
    raise ValueError(f"bn_stats rule {rule!r} has no shared update; expected one of {BN_STATS_RULES[:2]}")

#: the marker of a model's own cast to float32 that a float64 comparison step kept in float64, among a step's
#: `rounded` records (`torch_impl.float64_casts`, `paddle_impl.float64_casts`; check notes them apart)
KEPT_CAST = "float64 kept: "
