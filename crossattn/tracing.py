"""What a traced forward/backward records per layer, framework-neutral."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerTrace:
    """Per-call records of one traced step, keyed by layer name (`name#2` for a second call)."""

    order: list[str] = dataclasses.field(default_factory=list)  # forward completion order
    inputs: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    grads: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # d loss / d output
    output: np.ndarray | None = None


def call_key(name: str, call: int) -> str:
    """A layer called more than once (a shared pool, say) is recorded per call."""
    return name if call == 1 else f"{name}#{call}"
