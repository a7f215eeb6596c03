"""A framework-neutral description of one tensor of a model's state."""

from __future__ import annotations

import dataclasses

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
