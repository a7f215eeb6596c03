"""Equivalence check of a spec's twins: same weights, same input, forward and backward.

For each direction (weights initialised in one framework and transferred to the
other) and each mode (train, eval), both twins start from the same state and
take one forward and one backward of sum(output * r), r a fixed random tensor.
Compared, in the source framework's naming: the output, the input gradient,
every parameter gradient and, after the train-mode step, the BatchNorm running
statistics, under the stated rule of `conventions.replay_running_stats`: the
candidate's statistics must equal its own framework's update (paddle: biased
variance; torch: unbiased) replayed over the reference's batch statistics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from crossattn.compare import Comparison, compare, within_rounding_budget
from crossattn.conventions import replay_running_stats
from crossattn.frameworks import adapter
from crossattn.init import initial_state
from crossattn.model_pair import ModelPair, renamed_slots
from crossattn.spec import Spec
from crossattn.tolerances import ROUNDING_BUDGET_FACTOR, Tolerance, tolerance_for
from weight_transfer import TransferReport
from weight_transfer.transfer import trainable_key
from weight_transfer.slots import Slot

DIRECTIONS = ("torch->paddle", "paddle->torch")
MODES = ("train", "eval")
VAR_RULE = ("running statistics compared under the stated rule: each framework's update replayed over the "
            "reference's batch statistics (torch: unbiased variance n/(n-1), momentum 0.1; paddle: biased "
            "variance, momentum 0.9 held in float32)")


@dataclasses.dataclass
class CheckCase:
    spec: str
    direction: str
    mode: str
    comparisons: list[Comparison]
    transfer: str
    notes: list[str]
    copied: int = 0  # tensors the transfer copied

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def worst(self) -> Comparison:
        return max(self.comparisons, key=lambda c: (not c.passed, c.severity))

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    def to_json(self) -> dict:
        return {"spec": self.spec, "direction": self.direction, "mode": self.mode, "passed": self.passed,
                "transfer": self.transfer, "notes": self.notes,
                "comparisons": [c.to_json() for c in self.comparisons]}


def as_pair(models: ModelPair | Spec) -> ModelPair:
    """Engines take a ModelPair; a Spec stands for its twins."""
    return models if isinstance(models, ModelPair) else ModelPair.from_spec(models)


def _inputs(spec: Spec | ModelPair, seed: int, dtype: str) -> tuple[np.ndarray, Callable[[tuple[int, ...]], np.ndarray]]:
    if spec.input_shape is None:
        raise ValueError(f"{spec.name} has no input_shape; a check needs one")
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal(spec.input_shape).astype(dtype)

    def cotangent(shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, 2]).standard_normal(shape).astype(dtype)

    return x, cotangent


def _is_running_var(slot: Slot) -> bool:
    return slot.kind == "batchnorm" and slot.name in ("running_var", "_variance")


def _is_running_mean(slot: Slot) -> bool:
    return slot.kind == "batchnorm" and slot.name in ("running_mean", "_mean")


@dataclasses.dataclass
class TwinPair:
    """Both models of a pair, cast to the check dtype, with the shared initial state."""

    models: ModelPair
    src_fw: str
    dst_fw: str
    src: ModuleType
    dst: ModuleType
    src_model: Any
    dst_model: Any
    src_slots: dict[str, Slot]
    dst_slots: dict[str, Slot]
    src_init: dict[str, np.ndarray]
    dst_init: dict[str, np.ndarray]
    report: TransferReport

    def reload(self) -> None:
        self.src.load_state(self.src_model, self.src_init)
        self.dst.load_state(self.dst_model, self.dst_init)


class BuiltTwins:
    """Each model of a pair built once, with its state as built, shared by both directions of a check.

    Building (with the framework's default initialisation, overwritten at
    once) is a large part of checking a big model; every case reloads its
    initial state, so one model per framework serves them all.
    """

    def __init__(self, models: ModelPair, dtype: str) -> None:
        self.models, self.dtype = models, dtype
        self._built: dict[str, tuple[Any, dict[str, Slot], dict[str, np.ndarray]]] = {}

    def get(self, framework: str) -> tuple[Any, dict[str, Slot], dict[str, np.ndarray]]:
        """(model, slots, state as built): the state feeds the custom parameters' initial values."""
        if framework not in self._built:
            fw = adapter(framework)
            fw.setup("cpu")
            model = fw.to_dtype(self.models.build(framework), self.dtype)
            self._built[framework] = (model, fw.slots(model), fw.state(model))
        return self._built[framework]


def prepare_pair(models: ModelPair | Spec, direction: str, dtype: str = "float64", seed: int = 0,
                 after_transfer: Callable[[dict[str, np.ndarray]], None] | None = None,
                 built: BuiltTwins | None = None) -> TwinPair:
    """Build both models (or take them from `built`), draw random weights in the source, transfer them."""
    models = as_pair(models)
    src_fw, dst_fw = direction.split("->")
    src, dst = adapter(src_fw), adapter(dst_fw)
    built = built or BuiltTwins(models, dtype)
    src_model, src_slots, src_native = built.get(src_fw)
    dst_model, dst_slots, _ = built.get(dst_fw)
    src_init = initial_state(src_slots, src_native, src_fw, seed, mode="check")
    dst_init, report = models.transfer(src_init, src_fw, dst_fw, dst_slots)
    if after_transfer is not None:
        after_transfer(dst_init)
    pair = TwinPair(models, src_fw, dst_fw, src, dst, src_model, dst_model, src_slots, dst_slots, src_init, dst_init,
                    report)
    pair.reload()
    return pair


def check_spec(spec: ModelPair | Spec, directions: Sequence[str] = DIRECTIONS, modes: Sequence[str] = MODES,
               tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
               after_transfer: Callable[[dict[str, np.ndarray]], None] | None = None) -> list[CheckCase]:
    """Run the equivalence check of one spec's twins or a user's pair; `after_transfer` may tamper with the
    target state (tests)."""
    tol = tol or tolerance_for(dtype)
    spec = as_pair(spec)
    built = BuiltTwins(spec, dtype)
    cases = []
    for direction in directions:
        pair = prepare_pair(spec, direction, dtype, seed, after_transfer, built)
        for mode in modes:
            cases.append(_check_case(spec, pair, mode, tol, seed, dtype))
    return cases


def _exact_step(spec: ModelPair, pair: TwinPair, x: np.ndarray, cotangent, train: bool):
    """The reference framework's float64 step with the same weights: the exact answer for a float32 check."""
    model = pair.src.to_dtype(spec.build(pair.src_fw), "float64")
    pair.src.load_state(model, {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v
                                for k, v in pair.src_init.items()})

    def cotangent64(shape: tuple[int, ...]) -> np.ndarray:
        return cotangent(shape).astype(np.float64)

    return pair.src.step(model, x.astype(np.float64), cotangent64, train)


def _check_case(spec: ModelPair, pair: TwinPair, mode: str, tol: Tolerance, seed: int, dtype: str) -> CheckCase:
    pair.reload()
    train = mode == "train"
    x, cotangent = _inputs(spec, seed, dtype)
    ref = pair.src.step(pair.src_model, x, cotangent, train)
    got = pair.dst.step(pair.dst_model, x, cotangent, train)
    exact = _exact_step(spec, pair, x, cotangent, train) if dtype != "float64" else None

    def judged(name: str, category: str, candidate, reference, exact_value) -> Comparison:
        result = compare(name, category, candidate, reference, tol)
        if exact is None:
            return result
        return within_rounding_budget(result, candidate, reference, exact_value, ROUNDING_BUDGET_FACTOR)

    comparisons = [judged("output", "output", got.output, ref.output, exact and exact.output),
                   judged("input.grad", "input_grad", got.input_grad, ref.input_grad, exact and exact.input_grad)]
    got_grads, _ = pair.models.transfer(got.param_grads, pair.dst_fw, pair.src_fw, pair.src_slots, complete=False)
    for key, slot in pair.src_slots.items():
        if slot.trainable:
            comparisons.append(judged(f"{key}.grad", "param_grad", got_grads.get(key, np.zeros(slot.shape)),
                                      ref.param_grads[key], exact and exact.param_grads[key]))
    notes: list[str] = []
    if exact is not None:
        notes.append(f"{dtype}: tensors outside atol/rtol are judged against the reference framework's float64 "
                     f"result (pass when within {ROUNDING_BUDGET_FACTOR:g}x the reference's own rounding error)")
    if mode == "train":
        comparisons += _running_stats(pair.src_fw, pair.src_slots, pair.src_init, ref, got, pair.dst_fw, tol, notes,
                                      pair.models)
    comparisons += _trainable_flags(pair, tol)
    if train:
        comparisons += _other_buffers(pair, got, ref, tol)
    direction = f"{pair.src_fw}->{pair.dst_fw}"
    return CheckCase(spec.name, direction, mode, comparisons, pair.report.summary(), notes, pair.report.copied)


def _trainable_flags(pair: TwinPair, tol: Tolerance) -> list[Comparison]:
    """A tensor trained on one side and frozen on the other is a difference, whichever side is the source."""
    src = {trainable_key(s, pair.src_fw) for s in pair.src_slots.values() if s.trainable}
    dst_slots, _ = renamed_slots(pair.dst_slots, pair.models.layer_map(pair.dst_fw, pair.src_fw))
    dst = {trainable_key(s, pair.dst_fw) for s in dst_slots.values() if s.trainable}
    return [Comparison(key, "trainable", math.inf, math.inf, math.nan, False,
                       f"trainable in {pair.src_fw if key in src else pair.dst_fw} only", tol.atol, tol.rtol)
            for key in sorted(src ^ dst)]


def _other_buffers(pair: TwinPair, got, ref, tol: Tolerance) -> list[Comparison]:
    """State other than parameters and BatchNorm statistics, after the train step (an EMA, a step counter)."""
    got_state, _ = pair.models.transfer(got.state, pair.dst_fw, pair.src_fw, pair.src_slots, complete=False)
    out = []
    for key, slot in pair.src_slots.items():
        if slot.trainable or slot.kind == "batchnorm" or key not in got_state or key not in ref.state:
            continue
        if np.issubdtype(ref.state[key].dtype, np.floating):
            out.append(compare(key, "buffer", got_state[key], ref.state[key], tol))
        else:
            exact = np.array_equal(got_state[key], ref.state[key])
            out.append(Comparison(key, "buffer", 0.0 if exact else math.inf, 0.0 if exact else math.inf,
                                  1.0 if exact else math.nan, exact, "integers: compared exactly", tol.atol,
                                  tol.rtol))
    return out


def _running_stats(src_fw: str, src_slots: dict[str, Slot], src_init: dict[str, np.ndarray], ref, got,
                   dst_fw: str, tol: Tolerance, notes: list[str], models: ModelPair) -> list[Comparison]:
    """The candidate's running statistics against its own framework's rule replayed over the reference's batches."""
    got_state, _ = models.transfer(got.state, dst_fw, src_fw, src_slots, complete=False)
    by_layer: dict[str, dict[str, str]] = {}
    for key, slot in src_slots.items():
        if _is_running_mean(slot):
            by_layer.setdefault(slot.layer, {})["mean"] = key
        elif _is_running_var(slot):
            by_layer.setdefault(slot.layer, {})["var"] = key
    out = []
    for layer, keys in by_layer.items():
        calls = ref.bn_batches.get(layer, [])
        if not calls:
            notes.append(f"{layer}: BatchNorm not run in train mode; running statistics not compared")
            continue
        if len(calls) > 1:
            notes.append(f"{layer}: BatchNorm ran {len(calls)} times per step; compared by replaying each call")
        mean, var = replay_running_stats(src_init[keys["mean"]], src_init[keys["var"]], calls, dst_fw)
        note = f"{dst_fw} rule over {src_fw} batches, n={calls[0][2]}"
        out.append(compare(keys["mean"], "running_stat", got_state[keys["mean"]], mean, tol, note))
        out.append(compare(keys["var"], "running_stat", got_state[keys["var"]], var, tol, note))
    if by_layer:
        notes.append(VAR_RULE)
    return out
