"""What a traced forward/backward records per layer, framework-neutral."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerTrace:
    """Per-call records of one traced step, keyed by layer name (`name#2` for a second call)."""

    order: list[str] = dataclasses.field(default_factory=list)  # forward completion order
    #: the inputs the model's own code computed for a layer (before any single-step feed replaced them)
    inputs: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    grads: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # d loss / d output
    #: d loss / d input through this layer alone (what its backward produced), per floating input
    input_grads: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    #: the layer whose call encloses this one (None for the model itself)
    parent: dict[str, str | None] = dataclasses.field(default_factory=dict)
    #: layer -> the enclosing layer that returns the very same tensor (a Sequential and its last layer)
    outer: dict[str, str] = dataclasses.field(default_factory=dict)
    #: forward events in order: ("in", key) when a layer starts, ("out", key) when it returns
    events: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: backward events in the order autograd produced them: ("grad", key) arriving at a layer's
    #: output, ("input_grad", key) leaving it towards its inputs
    grad_events: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: per BatchNorm, per call (train mode): (batch mean, biased batch variance, values per channel)
    bn_batches: dict[str, list] = dataclasses.field(default_factory=dict)
    state_before: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    state_after: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    output: np.ndarray | None = None
    input_grad: np.ndarray | None = None
    #: d loss / d parameter after the step, keyed as the framework names the parameter
    param_grads: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: calls a torch trace gave the float32 values paddle applies (`torch_impl.comparison_calls`)
    rounded: list[str] = dataclasses.field(default_factory=list)
    #: dropout called as a function with dropout on, held off, with its rates (`crossattn.dropout_calls`)
    held_dropout: dict[str, float] = dataclasses.field(default_factory=dict)


def call_key(name: str, call: int) -> str:
    """A layer called more than once (a shared pool, say) is recorded per call."""
    return name if call == 1 else f"{name}#{call}"
