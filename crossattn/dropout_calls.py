"""Dropout in a comparison step: plain dropout masked alike in both frameworks, the rest held off; each call recorded.

Plain (elementwise) dropout, a layer's call or a function's, takes the mask of
the stream both frameworks share (`uniform`, named `layer[dropout]`), scaled as
each framework scales, so where it sits and how it scales are compared. The
other kinds (channel, alpha, attention, recurrent dropout) are held off: a
layer by eval mode (the adapters' `set_train_mode`), a function call
(`torch_impl.functional_dropout`, `paddle_impl.functional_dropout`) run as at
inference. Every call is recorded here, named by the layer whose forward made
it, so its rate is compared like a layer's. A call made with dropout on in an
eval-mode step is recorded too: that model drops at inference, which the other
may not.

A random tensor drawn inside a forward (a hand-written DropPath's
`bernoulli_` or `keep + rand` mask, noise) has no rate to compare and no
inference form. Both frameworks' wrappers of their random functions
(`torch_impl.shared_draws`, `paddle_impl.shared_draws`) take its values from
one stream instead: the n-th draw of a step is the same array in both, so two
models that draw alike compute the same function. A Bernoulli draw of
probability p is 1 where u > 1 - p for the stream's uniform u, which is the
mask `floor(1 - p + u)` gives too: the two usual DropPath forms draw alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: the name of the model itself among the layers a call is attributed to
MODEL = "(model)"
#: the seed of the stream a step's random draws come from (the same in every step and both frameworks)
DRAW_SEED = 7243


class DropoutCalls:
    """The dropout calls one step held off: `held[key]` is the rate, the key `layer[kind]` (`#n` for the n-th
    call of that kind in one layer's forward).

    `layers` gives {id(layer): name} of the model's layers; it is asked only
    when a call is recorded (a model without functional dropout pays nothing).
    """

    def __init__(self, layers: Callable[[], dict[int, str]] | None = None) -> None:
        self.held: dict[str, float] = {}
        #: the random draws the step took from the shared stream, in order: `layer[function]`
        self.draws: list[str] = []
        self._layers = layers
        self._names: dict[int, str] | None = None

    def uniform(self, function: str, shape: Sequence[int]) -> np.ndarray:
        """The next draw of the shared stream: float64 uniform in [0, 1), recorded as `function`'s."""
        return self._stream(function).random(tuple(shape))

    def normal(self, function: str, shape: Sequence[int]) -> np.ndarray:
        """The next draw of the shared stream: float64 standard normal, recorded as `function`'s."""
        return self._stream(function).standard_normal(tuple(shape))

    def _stream(self, function: str) -> np.random.Generator:
        self.draws.append(f"{self._caller()}[{function}]")
        return np.random.default_rng([DRAW_SEED, len(self.draws)])

    def record(self, kind: str, rate: float) -> None:
        base = f"{self._caller()}[{kind}]"
        key, n = base, 1
        while key in self.held:
            n += 1
            key = f"{base}#{n}"
        self.held[key] = float(rate)

    def _caller(self) -> str:
        """The innermost layer of the model whose method is on the stack (its forward, or a helper of it)."""
        if self._layers is None:
            return MODEL
        if self._names is None:
            self._names = self._layers()
        frame: Any = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self")
            name = self._names.get(id(owner)) if owner is not None else None
            if name is not None:
                return name or MODEL
            frame = frame.f_back
        return MODEL


def layer_of(key: str) -> tuple[str, str]:
    """(layer, `[kind]` suffix) of a held key; a dropout layer's own key has no suffix."""
    if key.endswith("]") or "]#" in key:
        layer, bracket, rest = key.partition("[")
        return layer, bracket + rest
    return key, ""


def bernoulli(uniform: np.ndarray, probability: np.ndarray | float) -> np.ndarray:
    """1 where the stream's uniform value is above 1 - p: the same mask as `floor(1 - p + u)`."""
    return (uniform > 1.0 - np.asarray(probability, dtype=np.float64)).astype(np.float64)
