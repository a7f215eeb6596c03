"""Framework-neutral initialisation: a seed gives the same weights in both twins.

Every tensor is drawn from its own generator, seeded by (seed, torch-side key),
in torch's layout, then laid out for the framework at hand. The draw therefore
depends on neither the framework nor the order layers are visited in.

Two modes:
- "default": torch's default distributions (kaiming-uniform with a=sqrt(5),
  bias uniform in +-1/sqrt(fan_in)), norms at one/zero, and layers a twin
  zero-initialised (the identity start of residual attention) kept at zero.
- "check": every tensor random, norms and running statistics included, so an
  equivalence check exercises every path (a zero-initialised branch would hide
  a wrong implementation behind a zero output). float32 tensors are drawn in
  float32 (the same for both twins, as every draw).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Literal

import numpy as np

from weight_transfer.rules import rule_for
from weight_transfer.slots import Slot
from weight_transfer.transfer import canonical_key

InitMode = Literal["default", "check"]


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _torch_layout_shape(slot: Slot, framework: str) -> tuple[int, ...]:
    rule = rule_for(slot.kind, slot.name, framework)
    if framework == "paddle" and rule is not None and rule.layout == "transpose":
        return tuple(reversed(slot.shape))
    return slot.shape


def _fan_in(slot: Slot, weight_shape: tuple[int, ...]) -> int:
    """fan_in as torch computes it from the weight's torch layout [out, in/groups, *kernel]."""
    if len(weight_shape) < 2:
        return max(weight_shape[0] if weight_shape else 1, 1)
    return int(np.prod(weight_shape[1:]))


def _single(slot: Slot, mode: InitMode) -> bool:
    """Whether a check draws this tensor in float32: a float32 slot holds no more, and the draw takes half the
    time and memory (a full-size model's draws were a tenth of its float32 check). Training ("default")
    draws stay float64, as they always were."""
    return mode == "check" and np.dtype(slot.dtype) in (np.dtype(np.float32), np.dtype(np.float16))


def _uniform(rng: np.random.Generator, low: float, high: float, shape: tuple[int, ...], single: bool) -> np.ndarray:
    if not single:
        return rng.uniform(low, high, size=shape)
    values = rng.random(shape, dtype=np.float32)
    values *= np.float32(high - low)
    values += np.float32(low)
    return values


#: a check's BatchNorm weights: wide enough that a train-mode BatchNorm's output (gamma * z + beta, z within
#: +-2.65 over 8 values per channel) reaches the clip of a ReLU6 or Hardtanh after it, which weights in [0.5, 1.5]
#: never do (a ReLU6 swapped for ReLU deep in MobileNetV2 passed). The running variance is drawn as
#: gamma^2 * U(0.5, 1.5), so an eval-mode BatchNorm's gain stays within [0.8, 1.4] and deep eval-mode nets
#: do not blow up
BN_WEIGHT_RANGE = (0.5, 8.0)


def _draw(slot: Slot, torch_name: str, shape: tuple[int, ...], weight_shapes: Mapping[str, tuple[int, ...]],
          native: np.ndarray, mode: InitMode, rng: np.random.Generator,
          bn_weight: np.ndarray | None = None) -> np.ndarray:
    kind, name = slot.kind, torch_name
    single = _single(slot, mode)
    if kind in ("conv", "linear", "embedding", "mha"):  # mha: attention projections, drawn as Linear
        if slot.zero_init and mode == "default":
            return np.zeros(shape)
        if kind == "embedding":
            return rng.standard_normal(shape, dtype=np.float32 if single else np.float64)
        weight_shape = weight_shapes.get(slot.layer, shape)
        bound = 1.0 / np.sqrt(max(_fan_in(slot, weight_shape), 1))
        return _uniform(rng, -bound, bound, shape, single)
    if kind in ("batchnorm", "layernorm", "groupnorm", "instancenorm"):
        if mode == "default":
            if slot.zero_init and name in ("weight", "bias"):
                return np.zeros(shape)
            return np.ones(shape) if name in ("weight", "running_var", "_variance") else np.zeros(shape)
        if kind == "batchnorm" and name == "weight":
            return _uniform(rng, *BN_WEIGHT_RANGE, shape, single)
        if kind == "batchnorm" and name == "running_var" and bn_weight is not None:
            return _uniform(rng, 0.5, 1.5, shape, single) * np.square(bn_weight)
        if name in ("weight", "running_var", "_variance"):
            return _uniform(rng, 0.5, 1.5, shape, single)
        if name == "num_batches_tracked":
            return np.zeros(shape)
        return _uniform(rng, -0.5, 0.5, shape, single)
    # other kinds: custom parameters keep the twin's constant initial value by default
    if mode == "default" or not np.issubdtype(native.dtype, np.floating):
        return native
    return native + rng.uniform(-0.5, 0.5, size=shape)


def _bn_weight(weights: Mapping[str, Slot], slot: Slot, key_torch: str, shape: tuple[int, ...], seed: int,
               mode: InitMode) -> np.ndarray | None:
    """The weight a check draws for the BatchNorm owning `slot` when `slot` is its running variance (which is
    drawn to match it); None otherwise, or when the layer has no weight. `weights`: BatchNorm weights by layer."""
    layer, _, name = key_torch.rpartition(".")
    if mode != "check" or slot.kind != "batchnorm" or name != "running_var" or slot.layer not in weights:
        return None
    return _uniform(_rng(seed, f"{layer}.weight" if layer else "weight"), *BN_WEIGHT_RANGE, shape,
                    _single(weights[slot.layer], mode))


STANDARD_KINDS = ("conv", "linear", "embedding", "mha", "batchnorm", "layernorm", "groupnorm", "instancenorm")


def custom_state(slots: Mapping[str, Slot], state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values `initial_state` takes from a model as built: its custom tensors' (standard layers draw all
    of theirs), so a large model's state as built need not be kept."""
    return {k: v for k, v in state.items() if k in slots and slots[k].kind not in STANDARD_KINDS}


def initial_state(slots: Mapping[str, Slot], native: Mapping[str, np.ndarray], framework: str, seed: int,
                  mode: InitMode = "default", draws: dict | None = None) -> dict[str, np.ndarray]:
    """Numpy state for a model whose slots are `slots`; `native` supplies custom parameters (it may hold only
    those: see `custom_state`).

    `draws`, when given, keeps each draw of a standard layer, by everything it depends on, until its
    next use: the other twin's state (the same values) then costs no second draw."""
    weight_shapes = {s.layer: _torch_layout_shape(s, framework) for s in slots.values() if s.name == "weight"}
    bn_weights = {s.layer: s for s in slots.values() if s.kind == "batchnorm" and s.name == "weight"}
    state: dict[str, np.ndarray] = {}
    for key, slot in slots.items():
        torch_shape = _torch_layout_shape(slot, framework)
        key_torch = canonical_key(slot, framework)
        torch_name = key_torch.rpartition(".")[2]
        memo = None
        if draws is not None and slot.kind in STANDARD_KINDS:
            memo = (seed, mode, key_torch, slot.kind, slot.zero_init, torch_shape,
                    weight_shapes.get(slot.layer, torch_shape), _single(slot, mode))
        if memo is not None and memo in draws:
            value = draws.pop(memo)
        else:
            own = native.get(key) if slot.kind in STANDARD_KINDS else native[key]  # standard layers draw theirs
            value = np.asarray(_draw(slot, torch_name, torch_shape, weight_shapes,
                                     None if own is None else np.asarray(own), mode, _rng(seed, key_torch),
                                     _bn_weight(bn_weights, slot, key_torch, torch_shape, seed, mode)))
            if memo is not None:
                draws[memo] = value
        if torch_shape != slot.shape:
            value = value.reshape(torch_shape).T if value.ndim == 2 else value.reshape(slot.shape)
        state[key] = np.ascontiguousarray(value, dtype=slot.dtype).reshape(slot.shape)
    return state


def padding_rows_zeroed(models: Any, fw: ModuleType, model: Any,
                         state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The drawn state with each embedding's padding row zero, as both frameworks build it and training keeps it
    (torch returns the row, paddle zeros whatever it holds: a drawn row made every equal pair fail). A side
    without the padding index still differs: its gradient reaches the row."""
    rows = {key: row for key, row in fw.padding_rows(model).items() if key in state}
    if not rows:
        return state
    state = dict(state)
    for key, row in rows.items():
        state[key] = state[key].copy()
        state[key][row] = 0
    note = (f"embedding padding rows drawn as zeros, as both frameworks build them ({len(rows)} layer(s), e.g. "
            f"`{next(iter(rows))}` row {next(iter(rows.values()))})")
    if not any(n.startswith("embedding padding rows") for n in models.conventions):
        models.conventions.append(note)
    return state
