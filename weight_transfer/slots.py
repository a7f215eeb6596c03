"""A framework-neutral description of one tensor of a model's state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: layer kinds the adapters recognise; rules are keyed by these, never by order
LAYER_KINDS = ("conv", "linear", "batchnorm", "layernorm", "groupnorm", "instancenorm", "prelu", "embedding",
               "mha", "other")


@dataclasses.dataclass(frozen=True)
class Slot:
    """One state tensor: where it lives, what layer kind owns it, its shape in its framework."""

    key: str  # state-dict key, e.g. "W.1.running_var"
    layer: str  # owning layer's qualified name, e.g. "W.1" ("" for the root)
    name: str  # tensor name inside the layer, e.g. "running_var"
    kind: str  # one of LAYER_KINDS
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    trainable: bool  # receives a gradient
    zero_init: bool = False  # the twin zeroes it at construction (identity start)


def join(layer: str, name: str) -> str:
    return f"{layer}.{name}" if layer else name


def state_problems(own: Mapping[str, Slot], values: Mapping[str, Any]) -> list[str]:
    """What keeps `values` from loading into a model with slots `own`: every missing, unexpected or
    mis-shaped key (the adapters refuse to load anything when this is not empty)."""
    import numpy as np

    problems = [f"missing `{k}`" for k in own if k not in values]
    problems += [f"unexpected `{k}`" for k in values if k not in own]
    problems += [f"mis-shaped `{k}`: got {list(np.shape(v))}, model has {list(own[k].shape)}"
                 for k, v in values.items() if k in own and tuple(np.shape(v)) != own[k].shape]
    return problems
