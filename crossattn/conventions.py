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


def paddle_bn_momentum(torch_momentum: float) -> float:
    """Paddle momentum equal in effect to a torch momentum."""
    return 1.0 - torch_momentum


def torch_bn_momentum(paddle_momentum: float) -> float:
    """Torch momentum equal in effect to a paddle momentum."""
    return 1.0 - paddle_momentum


#: paddle keeps its BatchNorm momentum as a float32 attribute, so in float64 its
#: running statistics move by float32(0.9), not 0.9 (a 2e-8 relative offset)
PADDLE_BN_MOMENTUM_EFFECTIVE = float(np.float32(BN_MOMENTUM_PADDLE))


def paddle_running_mean_from_torch(torch_new: np.ndarray, old: np.ndarray,
                                   torch_momentum: float = BN_MOMENTUM_TORCH) -> np.ndarray:
    """The running mean paddle holds after the step torch took, from the shared old value.

    The batch mean is recovered from torch's update, then folded in with
    paddle's effective (float32) momentum.
    """
    batch_mean = (torch_new - (1.0 - torch_momentum) * old) / torch_momentum
    keep = PADDLE_BN_MOMENTUM_EFFECTIVE
    return keep * old + (1.0 - keep) * batch_mean


def paddle_running_var_from_torch(torch_new: np.ndarray, old: np.ndarray, count: int,
                                  torch_momentum: float = BN_MOMENTUM_TORCH) -> np.ndarray:
    """The running variance paddle holds after the step torch took.

    torch folds the unbiased batch variance u into its running variance, paddle
    the biased one b = u (n-1)/n (n values per channel), with its effective
    float32 momentum. From torch's result and the shared old value:
    u = (new - (1-m) old) / m, and paddle holds k old + (1-k) b.
    """
    unbiased = (torch_new - (1.0 - torch_momentum) * old) / torch_momentum
    biased = unbiased * (count - 1) / count
    keep = PADDLE_BN_MOMENTUM_EFFECTIVE
    return keep * old + (1.0 - keep) * biased
