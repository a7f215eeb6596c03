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
    #: other state-dict keys of the same tensor: paddle's recurrent layers hold each weight under their own
    #: name (`weight_ih_l0`, torch's too) and again under their cell's (`0.cell.weight_ih`)
    aliases: tuple[str, ...] = ()


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


def fold_aliases(values: Mapping[str, Any], own: Mapping[str, Slot]) -> tuple[dict[str, Any], list[str]]:
    """`values` (a checkpoint's state) without the keys that alias a slot's tensor, and the problems: an alias
    whose value is not its tensor's (a file that names one tensor twice with two values is damaged)."""
    import numpy as np

    aliased = {alias: key for key, slot in own.items() for alias in slot.aliases}
    if not aliased:
        return dict(values), []
    problems = []
    for alias, key in aliased.items():
        if alias in values and key in values and not np.array_equal(np.asarray(values[alias]),
                                                                     np.asarray(values[key])):
            problems.append(f"`{alias}` differs from `{key}`, which names the same tensor")
    out = {k: v for k, v in values.items() if k not in aliased}
    for alias, key in aliased.items():  # a file holding the tensor under its alias alone
        if key not in out and alias in values:
            out[key] = values[alias]
    return out, problems


def with_aliases(values: Mapping[str, Any], own: Mapping[str, Slot]) -> dict[str, Any]:
    """`values` with every alias of a slot's tensor added, as the framework's own state dict holds them."""
    out = dict(values)
    for key, slot in own.items():
        for alias in slot.aliases:
            if key in values:
                out[alias] = values[key]
    return out
