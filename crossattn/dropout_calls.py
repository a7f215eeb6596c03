"""Dropout called as a function inside a forward, held off in a comparison step and recorded by its caller.

A dropout layer is held off by putting it in eval mode (the adapters'
`set_train_mode`). A dropout called as a function (`F.dropout(x, p,
training=self.training)`, attention's `dropout_p`) has no layer to switch: each
framework's wrapper of those functions (`torch_impl.functional_dropout`,
`paddle_impl.functional_dropout`) runs it as at inference instead and records
it here, named by the layer whose forward made the call, so its rate is
compared like a layer's. A call made with dropout on in an eval-mode step is
recorded too: that model drops at inference, which the other may not.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: the name of the model itself among the layers a call is attributed to
MODEL = "(model)"


class DropoutCalls:
    """The dropout calls one step held off: `held[key]` is the rate, the key `layer[kind]` (`#n` for the n-th
    call of that kind in one layer's forward).

    `layers` gives {id(layer): name} of the model's layers; it is asked only
    when a call is recorded (a model without functional dropout pays nothing).
    """

    def __init__(self, layers: Callable[[], dict[int, str]] | None = None) -> None:
        self.held: dict[str, float] = {}
        self._layers = layers
        self._names: dict[int, str] | None = None

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
