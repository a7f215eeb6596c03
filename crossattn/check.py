"""Equivalence check of a spec's twins: same weights, same input, forward and backward.

For each direction (weights initialised in one framework and transferred to the
other) and each mode (train, eval), both twins start from the same state and
take one forward and one backward of sum(output * r), r a fixed random tensor.
Compared, in the source framework's naming: the output, the input gradient,
every parameter gradient and, after the train-mode step, the BatchNorm running
statistics of *both* sides under the stated rule of
`conventions.replay_running_stats` (each side's statistics must equal its own
framework's update replayed over the reference's batch statistics), and every
other buffer.

Input probes (`PROBES`) beyond the standard-normal input drive activations
into saturating and clipped regions (large inputs, all positive in even
samples and all negative in odd ones, one batch); they run in eval mode (where
BatchNorm does not normalise their scale away) in the first direction.

In float32 both twins also run in float64 with the same float32-valued weights
and input (`Float64Truth`, shared between directions and modes); every tensor
is judged by `compare.judge` against both frameworks' float64 results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from crossattn.compare import Comparison, compare, judge
from crossattn.conventions import BN_MOMENTUM_TORCH, KEPT_CAST as KEPT, replay_running_stats, same_bn_update, shared_bn_rule
from crossattn.dropout_calls import MODEL, layer_of
from crossattn.frameworks import adapter
from crossattn.errors import CrossattnError, ForwardError
from crossattn.init import STANDARD_KINDS, custom_state, initial_state, padding_rows_zeroed
from crossattn.model_pair import ModelPair, renamed_slots
from crossattn.pair_sums import SumsMemo
from crossattn.spec import Spec
from crossattn.tolerances import Tolerance, tolerance_for
from weight_transfer import TransferReport
from weight_transfer.transfer import trainable_key
from weight_transfer.slots import Slot

DIRECTIONS = ("torch->paddle", "paddle->torch")
MODES = ("train", "eval")
VAR_RULE = ("running statistics of both sides compared under the stated rule: each framework's update "
            "replayed over the reference's batch statistics with each layer's own momentum (torch: unbiased "
            "variance n/(n-1), momentum weighing the batch; paddle: biased variance, momentum weighing the running "
            "value, held in float32; `name.momentum` rows: the two must be counterparts); `name [framework]` rows "
            "judge the reference")
FLOAT32_RULE = ("float32: each tensor is judged on both twins' float64 results for the same float32 weights and "
                "input (they must agree within rtol of scale) and on each side's float32 rounding against its "
                "own float64 result (see docs/equivalence.md)")


@dataclasses.dataclass
class CheckCase:
    spec: str
    direction: str
    mode: str
    comparisons: list[Comparison]
    transfer: str
    notes: list[str]
    copied: int = 0  # tensors the transfer copied
    probe: str = "normal"  # which input (see PROBES)
    retried: bool = False  # float32: judged on a further input after the first failed on rounding alone

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
        return {"spec": self.spec, "direction": self.direction, "mode": self.mode, "probe": self.probe,
                "passed": self.passed, "second_input": self.retried,
                "transfer": self.transfer, "notes": self.notes,
                "comparisons": [c.to_json() for c in self.comparisons]}


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def _large_positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All positive, mean about 57: past ReLU6's clip, sigmoid/tanh saturation, hard-sigmoid's corners."""
    return PROBE_SCALE * (1.0 + np.abs(rng.standard_normal(shape)))


def _large_negative(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """The mirror image: units whose weights sum negative reach the same regions from the other side."""
    return -_large_positive(rng, shape)


def _large_both_signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Both large probes in one batch: even samples all positive, odd samples all negative.

    In eval mode no layer mixes the samples of a batch, so one step reaches the
    regions of both probes at the cost of one (two steps cost twice: a step's
    time grows with the batch).
    """
    x = _large_positive(rng, shape)
    x[1::2] *= -1.0
    return x


def resized_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The input shape with every spatial size (past batch and channels) one larger: even sizes become odd."""
    return tuple(shape[:2]) + tuple(int(v) + 1 for v in shape[2:])


def _resized(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal at one more pixel per spatial axis: a pooling's ceil_mode, an adaptive pool written as a
    fixed one, a 'SAME' padding or a resize that agree at the given size part at odd remainders."""
    return rng.standard_normal(resized_shape(shape))


#: magnitude of the large probes
PROBE_SCALE = 32.0
#: input probes: the standard-normal input every case uses, then inputs reaching other regions
PROBES: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "normal": _normal, "positive": _large_positive, "negative": _large_negative, "large": _large_both_signs,
    "resized": _resized}
#: probes a case is skipped for when a model cannot run on them (the size a model takes may be fixed)
OPTIONAL_PROBES = ("resized",)


def default_probes(input_shape: Sequence[int] | None, resized: bool = False) -> tuple[str, ...]:
    """The probes `check` runs beyond the normal input: both signs in one batch, or apart for a batch of one;
    with `resized` (a user's own pair, spatial input) also the input one pixel larger per spatial axis."""
    large = ("large",) if input_shape is not None and len(input_shape) > 0 and input_shape[0] >= 2 \
        else ("positive", "negative")
    return large + (("resized",) if resized and input_shape is not None and len(input_shape) >= 3 else ())


def users_pair(models: Any) -> bool:
    """A user's own pair (factories, not a spec's twins): its checks also probe another input size."""
    return hasattr(models, "builders") and models.spec is None


def as_pair(models: ModelPair | Spec) -> ModelPair:
    """Engines take a ModelPair; a Spec stands for its twins."""
    return models if isinstance(models, ModelPair) else ModelPair.from_spec(models)


def _inputs(spec: Spec | ModelPair, seed: int, dtype: str,
            probe: str = "normal") -> tuple[np.ndarray, Callable[[tuple[int, ...]], np.ndarray]]:
    if spec.input_shape is None:
        raise ValueError(f"{spec.name} has no input_shape; a check needs one")
    return probe_input(tuple(spec.input_shape), seed, dtype, probe)


def probe_input(shape: tuple[int, ...], seed: int, dtype: str,
                probe: str = "normal") -> tuple[np.ndarray, Callable[[tuple[int, ...]], np.ndarray]]:
    """The seeded input of a probe and the seeded cotangent r of sum(output * r)."""
    rng = np.random.default_rng([seed, 1] if probe == "normal" else [seed, 1, list(PROBES).index(probe)])
    x = PROBES[probe](rng, shape).astype(dtype)

    def cotangent(out_shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, 2]).standard_normal(out_shape).astype(dtype)

    return x, cotangent


def _is_running_var(slot: Slot) -> bool:
    return slot.kind == "batchnorm" and slot.name in ("running_var", "_variance")


def _is_running_mean(slot: Slot) -> bool:
    return slot.kind == "batchnorm" and slot.name in ("running_mean", "_mean")


class LoadedStates:
    """Which state each built model holds, so that a step on the state a model already holds skips loading it.

    A step moves no trainable parameter (no optimizer runs); it can move the
    other tensors (a train-mode BatchNorm's running statistics, a counter).
    After every step the state it returns is compared with the state loaded:
    a model whose tensors moved is loaded again at its next step, one whose
    tensors did not (an eval-mode step) still holds the loaded state.
    """

    def __init__(self) -> None:
        self.held: dict[int, tuple[Any, dict[str, np.ndarray]]] = {}  # id(model) -> (model, state)
        #: models built without storage (`built_lazily`): their first state becomes their storage
        self.without_storage: dict[int, Any] = {}

    def load(self, module: ModuleType, model: Any, state: dict[str, np.ndarray], private: bool = False) -> None:
        """Load `state` into `model`; `private`: the arrays are this load's own (a cast), and a model without
        storage may keep them as its storage instead of a copy."""
        if self.without_storage.get(id(model)) is model:
            module.load_lazy(model, state, consume=private)
            del self.without_storage[id(model)]
        else:
            module.load_state(model, state)
        self.loaded(model, state)

    def holds(self, model: Any, state: dict[str, np.ndarray]) -> bool:
        entry = self.held.get(id(model))
        return entry is not None and entry[0] is model and entry[1] is state

    def loaded(self, model: Any, state: dict[str, np.ndarray]) -> None:
        self.held[id(model)] = (model, state)

    def stepped(self, model: Any, after: dict[str, np.ndarray]) -> None:
        """`after`: the model's untrained tensors after a step; any moved means the loaded state is gone."""
        entry = self.held.get(id(model))
        if entry is None:
            return
        state = entry[1]
        if any(key not in state or not np.array_equal(value, state[key]) for key, value in after.items()):
            del self.held[id(model)]

    def step(self, module: ModuleType, model: Any, state: dict[str, np.ndarray], x: np.ndarray, cotangent,
             train: bool, prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None):
        """`module.step` from `state`, loading it (through `prepare`, e.g. a cast) unless the model holds it."""
        if not self.holds(model, state):
            if prepare is None:
                self.load(module, model, state)
            else:
                self.load(module, model, prepare(state), private=True)
                self.loaded(model, state)
        result = module.step(model, x, cotangent, train)
        self.stepped(model, result.state)
        return result


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
    #: the state each model holds (shared with the BuiltTwins the models came from)
    loads: LoadedStates = dataclasses.field(default_factory=LoadedStates)
    #: the source slots in each floating dtype results are mapped into (`_in_source_naming`)
    mapping_slots: dict[str, dict[str, Slot]] = dataclasses.field(default_factory=dict)

    def reload(self) -> None:
        self.loads.load(self.src, self.src_model, self.src_init)
        self.loads.load(self.dst, self.dst_model, self.dst_init)


class BuiltTwins:
    """Each model of a pair built once, with its state as built, shared by both directions of a check.

    Building (with the framework's default initialisation, overwritten at
    once) is a large part of checking a big model; every case reloads its
    initial state, so one model per framework serves them all.
    """

    def __init__(self, models: ModelPair, dtype: str) -> None:
        self.models, self.dtype = models, dtype
        self._built: dict[str, tuple[Any, dict[str, Slot], dict[str, np.ndarray]]] = {}
        self.loads = LoadedStates()

    def get(self, framework: str) -> tuple[Any, dict[str, Slot], dict[str, np.ndarray]]:
        """(model, slots, custom tensors as built): they feed the custom parameters' initial values."""
        if framework not in self._built:
            fw = adapter(framework)
            fw.setup("cpu")
            model, has_storage = built_lazily(self.models, framework, self.dtype)
            slots = fw.slots(model)
            if any(s.dtype != self.dtype and np.issubdtype(np.dtype(s.dtype), np.floating)
                   for s in slots.values()):  # a tensor created with an explicit dtype
                if not has_storage:
                    fw.load_lazy(model, _zeros(slots), consume=True)
                    has_storage = True
                model = fw.to_dtype(model, self.dtype)
                slots = fw.slots(model)
            if not has_storage:
                self.loads.without_storage[id(model)] = model
            custom = any(slot.kind not in STANDARD_KINDS for slot in slots.values())
            self._built[framework] = (model, slots, custom_state(slots, fw.state(model)) if custom else {})
        return self._built[framework]


def built_lazily(models: ModelPair, framework: str, dtype: str | None = None) -> tuple[Any, bool]:
    """(model, whether it has storage): built without storage and without the framework's default
    initialisation, which check overwrites at once (a quarter of building a large model), in `dtype` (else the
    framework's default); its first load gives it storage (`LoadedStates.load`), so no zeros are written
    first. Built for real where something needs the built values: a custom tensor (its initial value feeds
    the draw) or a tensor the state does not cover (a non-persistent buffer)."""
    fw = adapter(framework)
    with fw.default_dtype(dtype) if dtype else contextlib.nullcontext():
        model = models.build_lazy(framework)
        if any(slot.kind not in STANDARD_KINDS for slot in fw.slots(model).values()) or fw.uncovered(model):
            return models.build(framework), True
    return model, False


def _zeros(slots: dict[str, Slot]) -> dict[str, np.ndarray]:
    return {k: np.zeros(s.shape, s.dtype) for k, s in slots.items()}


def prepare_pair(models: ModelPair | Spec, direction: str, dtype: str = "float64", seed: int = 0,
                 after_transfer: Callable[[dict[str, np.ndarray]], None] | None = None,
                 built: BuiltTwins | None = None, load: bool = True, draws: dict | None = None) -> TwinPair:
    """Build both models (or take them from `built`), draw random weights in the source, transfer them
    (and load them, unless `load` is false: check loads each state when it steps)."""
    models = as_pair(models)
    src_fw, dst_fw = direction.split("->")
    src, dst = adapter(src_fw), adapter(dst_fw)
    built = built or BuiltTwins(models, dtype)
    src_model, src_slots, src_native = built.get(src_fw)
    dst_model, dst_slots, _ = built.get(dst_fw)
    if models.weights is not None:  # a user's checkpoint (`start_weights`)
        from crossattn.start_weights import start_state

        src_init = start_state(models, src_fw, src_slots)
    else:
        src_init = initial_state(src_slots, src_native, src_fw, seed, mode="check", draws=draws)
        src_init = padding_rows_zeroed(models, src, src_model, src_init)
    dst_init, report = models.transfer(src_init, src_fw, dst_fw, dst_slots)
    if after_transfer is not None:
        after_transfer(dst_init)
    pair = TwinPair(models, src_fw, dst_fw, src, dst, src_model, dst_model, src_slots, dst_slots, src_init, dst_init,
                    report, built.loads)
    if load:
        pair.reload()
    return pair


def _build(source: ModelPair | Spec, framework: str) -> Any:
    """A fresh model of the pair (a Spec stands for its twins)."""
    return as_pair(source).build(framework)


def _as64(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}


class Float64Truth:
    """Each framework's float64 step for given float32-valued weights and input: the exact answer of its side.

    Runs are cached by (framework, mode, probe, state): the two directions of a
    check share their equal states (`StepCache.share_states`), so each float64
    step runs once per spec, mode and probe, not once per direction. An entry
    is dropped at its second use (a full-size model's float64 state and
    gradients are large).
    """

    def __init__(self, source: Any) -> None:
        self.built = BuiltTwins(as_pair(source), "float64")
        self.cache: dict[tuple, Any] = {}

    def step(self, framework: str, state: dict[str, np.ndarray], x: np.ndarray, cotangent, train: bool,
             probe: str = "normal"):
        key = (framework, train, probe, id(state))
        if key in self.cache:
            return self.cache.pop(key)
        module = adapter(framework)
        model = self.built.get(framework)[0]
        result = self.built.loads.step(module, model, state, x.astype(np.float64),
                                       lambda shape: cotangent(shape).astype(np.float64), train, prepare=_as64)
        if probe == "normal":  # probes run in one direction only: nothing to share
            self.cache[key] = result
        return result


def check_spec(spec: ModelPair | Spec, directions: Sequence[str] = DIRECTIONS, modes: Sequence[str] = MODES,
               tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
               after_transfer: Callable[[dict[str, np.ndarray]], None] | None = None,
               probes: Sequence[str] | None = None) -> list[CheckCase]:
    """Run the equivalence check of one spec's twins or a user's pair; `after_transfer` may tamper with the
    target state (tests).

    Every direction and mode runs on the standard-normal input; each of
    `probes` (None: `default_probes`) runs once more, in eval mode (when eval
    is asked for), in the first direction.
    """
    tol = tol or tolerance_for(dtype)
    spec = as_pair(spec)
    probes = default_probes(spec.input_shape, users_pair(spec)) if probes is None else probes
    built = BuiltTwins(spec, dtype)
    truth = Float64Truth(spec) if dtype != "float64" else None
    steps = StepCache()
    probes = probes if "eval" in modes else ()  # in train mode BatchNorm normalises a probe's scale away
    draws: dict = {}  # the directions draw the same values: once (crossattn.init)
    pairs = [prepare_pair(spec, direction, dtype, seed, after_transfer, built, load=False, draws=draws)
             for direction in directions]
    del draws
    for pair in pairs[1:]:
        steps.share_states(pair, pairs[0])
    judged: dict[tuple[int, str, str], CheckCase] = {}

    # directions whose states are the same objects share their steps, and so the arrays they compare
    memo = SumsMemo() if len(pairs) > 1 and pairs[1].src_init is pairs[0].dst_init and \
        pairs[1].dst_init is pairs[0].src_init else None

    # the buffers each factory builds (a window attention's index, a mask), in float64 where there are twins of it
    as_built = [_buffers_as_built(pair, truth.built if truth is not None else built, tol) for pair in pairs]

    skipped: list[str] = []

    def case(pair: TwinPair, mode: str, probe: str) -> CheckCase | None:
        try:
            first = _check_case(spec, pair, mode, tol, seed, dtype, probe, truth, steps,
                                memo=memo if probe == "normal" else None)
        except ForwardError as exc:
            if probe not in OPTIONAL_PROBES:
                raise
            shape = ",".join(map(str, resized_shape(spec.input_shape)))
            skipped.append(f"the {probe} probe (input {shape}, one pixel more per spatial axis, where size-dependent "
                           f"differences such as a pooling's ceil_mode show) did not run: {exc}".replace(
                               "; if that shape is not what the model takes, give the right one (--input-shape for "
                               "your own pair, or the spec's input_shape)", ""))
            return None
        if truth is not None and not first.passed and all(c.truths_agree for c in first.failures):
            first = _second_input(spec, pair, mode, tol, seed, dtype, probe, truth, first)
        first.comparisons += as_built[pairs.index(pair)]
        return first

    # mode by mode: a step shared between directions is held only until its second use. Eval first: an eval
    # step moves no state, so each model is loaded once for its eval steps and its train step (LoadedStates)
    for mode in sorted(modes, key=lambda m: m != "eval"):
        for index, pair in enumerate(pairs):
            judged[index, mode, "normal"] = case(pair, mode, "normal")
        if memo is not None:
            memo.clear()
        if mode == "eval":
            for probe in probes:
                judged[0, "eval", probe] = case(pairs[0], "eval", probe)
    order = [(index, mode, "normal") for index in range(len(pairs)) for mode in modes]
    order[len(modes):len(modes)] = [(0, "eval", probe) for probe in probes]
    cases = [judged[key] for key in order if judged[key] is not None]
    if skipped and cases:
        cases[0].notes += skipped
    return cases


#: the seed offset between the further inputs a float32 case is re-run on (see `_second_input`)
SECOND_INPUT = 7919
#: how many further inputs a float32 case that failed on rounding alone is re-run on, until one passes
FURTHER_INPUTS = 3


def _second_input(spec: ModelPair, pair: TwinPair, mode: str, tol: Tolerance, seed: int, dtype: str, probe: str,
                  truth: "Float64Truth", first: CheckCase) -> CheckCase:
    """A float32 case that failed only on rounding (both frameworks' float64 results agree), run again on up to
    `FURTHER_INPUTS` further inputs of the same probe.

    A float32 result can land on the other side of a non-smooth point than its
    own float64 result: a ReLU input or a max-pool near-tie within rounding of
    its kink, so one framework's gradient takes the other branch there (measured
    on GCNet at 40x40, negative probe: paddle's input gradient 2333x past
    rounding, traced by `diff` to the ReLU after stages.0.1.bn1, with the
    float64 results 1.7e-15 apart). Such a near-tie belongs to one input; a
    float32 defect (half-precision arithmetic, a constant held too coarsely)
    shows on every input. A large model has so many pooling windows that a
    near-tie is on about every other input (measured: Inception v3 at 109 px,
    a block-B max-pool whose two values 1.3e-7 apart swap in paddle's float32
    on the first and the second input). So the case passes if a further input
    passes, with the failures before it kept in its notes; else the first
    result stands. A further input whose float64 results disagree ends the search.
    """
    worst = first.worst
    said = (f"the first {probe} input failed on float32 rounding alone ({worst.tensor}: "
            f"{worst.severity:.3g}x its bound; both frameworks' float64 results agree)")
    failed: list[str] = []
    for k in range(1, FURTHER_INPUTS + 1):
        offset = k * SECOND_INPUT
        again = _check_case(spec, pair, mode, tol, seed + offset, dtype, probe, truth, None, shared=False)
        if again.passed:
            before = f"; input(s) at seed + {', '.join(failed)} failed on rounding too" if failed else ""
            again.notes.insert(0, said + before + f"; a further input of the same probe (seed + {offset}) passes: "
                               "a near-tie at a non-smooth point (a ReLU or max-pool kink), not a float32 defect")
            again.retried = True
            return again
        failed.append(f"{offset} ({again.worst.tensor})")
        if not all(c.truths_agree for c in again.failures):
            break
    first.notes.insert(0, said + f"; further inputs failed too: seed + {', '.join(failed)}")
    return first


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Bit for bit the same tensors under the same keys (a transfer that rounds or moves a value is not)."""
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if value.dtype != other.dtype or value.shape != other.shape:
            return False
        if not np.array_equal(np.ascontiguousarray(value).view(np.uint8), np.ascontiguousarray(other).view(np.uint8)):
            return False
    return True


class StepCache:
    """Each framework's step on given weights and input, run once per spec.

    Both directions of a check draw the same framework-neutral weights
    (crossattn.init), so when the second direction's transfer lands on exactly
    the bytes the first direction drew, its steps are the first's: they are
    taken from here instead of run again. A transfer that changes anything
    (a rounded value, a wrong layout) fails `_same_state`, and that step runs.
    An entry is dropped at its second use.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, bool, str, int], Any] = {}

    @staticmethod
    def share_states(pair: TwinPair, first: TwinPair) -> None:
        """Let `pair` hold `first`'s state objects where they are equal, so one state is kept, not two."""
        held = {first.src_fw: first.src_init, first.dst_fw: first.dst_init}
        for name, framework in (("src_init", pair.src_fw), ("dst_init", pair.dst_fw)):
            other = held.get(framework)  # the same framework's state (two frameworks' may be equal too)
            if other is not None and _same_state(getattr(pair, name), other):
                setattr(pair, name, other)

    def step(self, module: ModuleType, model: Any, framework: str, state: dict[str, np.ndarray], x: np.ndarray,
             cotangent, train: bool, probe: str, loads: LoadedStates | None = None):
        key = (framework, train, probe, id(state))
        if key in self.entries:
            return self.entries.pop(key)
        result = (loads or LoadedStates()).step(module, model, state, x, cotangent, train)
        if probe == "normal":  # probes run in one direction only: nothing to share
            self.entries[key] = result
        return result


class Judge:
    """Judges tensors of one case: `compare` in float64, `judge` (float32 rule) when float64 truths exist.

    `memo` (shared by the cases of both directions when they share their steps)
    gives the second direction the sums of the same arrays the first compared.
    """

    def __init__(self, tol: Tolerance, truthful: bool, memo: SumsMemo | None = None) -> None:
        self.tol, self.truthful, self.memo = tol, truthful, memo

    def __call__(self, name: str, category: str, candidate, reference, candidate64=None, reference64=None,
                 note: str = "", scale: float | None = None) -> Comparison:
        if self.truthful and candidate64 is not None and reference64 is not None:
            return judge(name, category, reference, candidate, reference64, candidate64, self.tol, note, scale,
                         self.memo)
        return compare(name, category, candidate, reference, self.tol, note, scale, self.memo)


def param_grad_comparisons(pair: TwinPair, ref, got, ref64, got64, judged: Judge) -> list[Comparison]:
    """Every trainable parameter's gradient, in the reference's naming, judged against the case's largest
    gradient (its family scale); a gradient the candidate lost compares as zeros. `ref`/`got` are steps or
    traces (both carry `param_grads`)."""
    got_grads = _in_source_naming(pair, got.param_grads)
    got_grads64 = _in_source_naming(pair, got64.param_grads) if got64 is not None else {}
    reference_grads = (ref64 or ref).param_grads
    scale = max((float(np.linalg.norm(g)) for g in reference_grads.values()), default=0.0)
    out = []
    for key, slot in pair.src_slots.items():
        if slot.trainable:
            lost = key not in got_grads or (got64 is not None and key not in got_grads64)
            missing = np.zeros(slot.shape) if lost else None  # a gradient the candidate lost
            out.append(judged(f"{key}.grad", "param_grad", got_grads.get(key, missing), ref.param_grads[key],
                              got_grads64.get(key, missing) if got64 is not None else None,
                              ref64.param_grads[key] if ref64 is not None else None, scale=scale))
    return out


def _check_case(spec: ModelPair, pair: TwinPair, mode: str, tol: Tolerance, seed: int, dtype: str,
                probe: str = "normal", truth: Float64Truth | None = None,
                steps: "StepCache | None" = None, shared: bool = True, memo: SumsMemo | None = None) -> CheckCase:
    """One direction, mode and probe; `shared` false: its steps are this case's own (a second input)."""
    train = mode == "train"
    x, cotangent = _inputs(spec, seed, dtype, probe)
    steps = steps or StepCache()
    key = probe if shared else f"{probe}, second input"  # caches share only "normal" steps
    ref = steps.step(pair.src, pair.src_model, pair.src_fw, pair.src_init, x, cotangent, train, key, pair.loads)
    got = steps.step(pair.dst, pair.dst_model, pair.dst_fw, pair.dst_init, x, cotangent, train, key, pair.loads)
    ref64 = got64 = None
    if truth is not None:
        ref64 = truth.step(pair.src_fw, pair.src_init, x, cotangent, train, key)
        got64 = truth.step(pair.dst_fw, pair.dst_init, x, cotangent, train, key)
    judged = Judge(tol, truth is not None, memo)
    pick = (lambda result, attr: getattr(result, attr) if result is not None else None)
    comparisons = [judged("output", "output", got.output, ref.output, pick(got64, "output"), pick(ref64, "output")),
                   judged("input.grad", "input_grad", got.input_grad, ref.input_grad, pick(got64, "input_grad"),
                          pick(ref64, "input_grad"))]
    comparisons += param_grad_comparisons(pair, ref, got, ref64, got64, judged)
    notes: list[str] = list(pair.models.conventions)
    rounded = sorted({r for result in (ref, got, ref64, got64) for r in getattr(result, "rounded", ())})
    kept = [r.removeprefix(KEPT) for r in rounded if r.startswith(KEPT)]
    rounded = [r for r in rounded if not r.startswith(KEPT)]
    if kept:
        notes.append(f"the model's own casts of float64 tensors to float32 kept in float64 in the float64 steps "
                     f"(at the float32 users run they do nothing; in float64 they rounded one side only): "
                     + ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else ""))
    if rounded:
        notes.append(f"torch's calls given the float32 values paddle applies (`torch_impl.comparison_calls`): "
                     f"{', '.join(rounded)}")
    if truth is not None:
        notes.append(FLOAT32_RULE)
    if train:
        comparisons += _running_stats(pair, ref, got, ref64, got64, judged, notes)
    comparisons += _trainable_flags(pair, tol)
    comparisons += _dropout_rates(pair, ref, got, tol, notes, train)
    notes += _shared_draws_note(pair, ref, got)
    if train:
        comparisons += _other_buffers(pair, ref, got, ref64, got64, judged)
        if not all(c.passed for c in comparisons):
            notes += few_values_per_channel(ref.bn_batches)
    direction = f"{pair.src_fw}->{pair.dst_fw}"
    return CheckCase(spec.name, direction, mode, comparisons, pair.report.summary(), notes, pair.report.copied,
                     probe)


def _dropout_rates(pair: TwinPair, ref, got, tol: Tolerance, notes: list[str], train: bool = True) -> list[Comparison]:
    """Dropout is held off (identity) in a train-mode step, as no two frameworks draw the same masks; what is
    left to compare is each layer's rate, by name (a dropout on one side only fails too, unless its rate is 0).
    Dropout called as a function is held and compared the same way, named by the layer that calls it, in an
    eval-mode step too when it is called with dropout on (`crossattn.dropout_calls`)."""
    reference = getattr(ref, "held_dropout", {})
    oriented = pair.models.layer_map(pair.dst_fw, pair.src_fw)
    candidate = {_held_in_source_naming(name, oriented): rate for name, rate in getattr(got, "held_dropout", {}).items()}
    if not reference and not candidate:
        return []
    masked = sorted(name for name in {*reference, *candidate} if layer_of(name)[1].split("#")[0] in MASKED_KINDS)
    held = [name for name in reference if name not in masked]
    functional = sorted(name for name in {*reference, *candidate} if layer_of(name)[1] and name not in masked)
    if masked:
        counts = {pair.src_fw: sum(1 for n in reference if n in masked), pair.dst_fw: sum(1 for n in candidate
                                                                                     if n in masked)}
        notes.append(f"plain dropout applied with the mask of one stream both frameworks share (the n-th call's mask "
                     f"the same array in both, scaled as each framework's dropout scales), so where it sits and how "
                     f"it scales are compared like any op: "
                     + ", ".join(f"`{layer_of(name)[0]}`" for name in masked[:3])
                     + (f" and {len(masked) - 3} more" if len(masked) > 3 else "")
                     + ("" if len(set(counts.values())) == 1 else
                        f"; the two apply a different number of masks ({counts[pair.src_fw]} in {pair.src_fw}, "
                        f"{counts[pair.dst_fw]} in {pair.dst_fw})")
                     + ("" if train else "; called with dropout on in eval mode: such a model drops at inference"))
    if held and train:
        notes.append(f"dropout held off (run as at inference: the identity, or paddle's downscale_in_infer scaling "
                     f"by 1 - p) in both frameworks in train mode ({len(held)} layer(s) or call(s): channel, alpha, "
                     f"attention or recurrent dropout): its masks come from each framework's own generator; each "
                     f"rate is compared, its train-mode scaling is not")
    elif held:
        notes.append("dropout called as a function with dropout on in eval mode, held off and its rate compared: "
                     "such a model drops at inference")
    if functional:
        notes.append("dropout called as a function, run as at inference and named by the layer calling it: "
                     + ", ".join(f"`{name}`" for name in functional[:3])
                     + (f" and {len(functional) - 3} more" if len(functional) > 3 else ""))
    matched = [(name, name, candidate[name], reference[name]) for name in reference if name in candidate]
    ref_only = [name for name in reference if name not in candidate]
    got_only = [name for name in candidate if name not in reference]
    if ref_only and len(ref_only) == len(got_only):  # layers without tensors have no name in a structural map
        matched += [(name, other, candidate[other], reference[name]) for name, other in zip(ref_only, got_only)]
        notes.append(f"dropout whose names do not map matched in the order the models register or call them: "
                     + ", ".join(f"`{name}` -> `{other}`" for name, other in zip(ref_only[:3], got_only[:3]))
                     + (f" and {len(ref_only) - 3} more" if len(ref_only) > 3 else ""))
        ref_only = got_only = []
    out = []
    for name, other, a, b in matched:
        same = a == b
        how = f"rate {a:g} vs reference {b:g}" + ("" if name == other else f" (candidate `{other}`)")
        out.append(_exact_row(f"{name}.p", same, how, tol))
    for names, values, framework in ((ref_only, reference, pair.src_fw), (got_only, candidate, pair.dst_fw)):
        for name in names:
            rate = values[name]
            how = f"dropout in {framework} only" + (" (rate 0: no dropout)" if rate == 0 else f" (rate {rate:g})")
            out.append(_exact_row(f"{name}.p", rate == 0, how, tol))
    return out


#: the dropout kinds applied with the shared stream's mask (`torch_impl/paddle_impl.functional_dropout`)
MASKED_KINDS = ("[dropout]", "[dropout(mode=downscale_in_infer)]")


def _shared_draws_note(pair: TwinPair, ref, got) -> list[str]:
    """What the step's random tensors were: the shared stream's values, in the order of the calls (dropout's own
    masks are `_dropout_rates`' note)."""
    drawn = {fw: [d for d in getattr(result, "shared_draws", []) if not d.endswith("[dropout]")]
             for fw, result in ((pair.src_fw, ref), (pair.dst_fw, got))}
    if not any(drawn.values()):
        return []
    counts = ", ".join(f"{len(calls)} in {framework}" for framework, calls in drawn.items())
    first = next(calls for calls in drawn.values() if calls)
    return [f"random tensors drawn in the forward ({counts}; first `{first[0]}`) took the values of one stream both "
            f"frameworks share, the n-th draw the same array in both (a Bernoulli mask of p is 1 where u > 1 - p, as "
            f"floor(1 - p + u) gives): models that draw alike compare as one function"
            + ("" if len(drawn[pair.src_fw]) == len(drawn[pair.dst_fw]) else
               "; the two draw a different number of times, so their masks or noise differ")]


def _held_in_source_naming(key: str, oriented: dict[str, str]) -> str:
    """A held dropout's key with its layer in the reference's naming."""
    from weight_transfer.transfer import map_layer_name

    layer, call = layer_of(key)
    return (layer if layer == MODEL else map_layer_name(layer, oriented)) + call


def _exact_row(tensor: str, same: bool, how: str, tol: Tolerance, category: str = "dropout") -> Comparison:
    """A row judged exactly (a hyperparameter, not a tensor): passes only when equal."""
    return Comparison(tensor, category, 0.0 if same else math.inf, 0.0 if same else math.inf, 1.0 if same else math.nan,
                      same, how, tol.atol, tol.rtol, 0.0 if same else math.inf)


#: values per channel at or below which a train-mode BatchNorm makes a step ill-conditioned
FEW_VALUES = 4


def few_values_per_channel(bn_batches: dict[str, list]) -> list[str]:
    """Why a failing train case may be rounding alone: BatchNorm layers normalising only a few values per channel.

    With two values per channel a train-mode BatchNorm outputs about +-1 whatever
    its input, and its backward divides by a standard deviation that can be near
    zero: stacked, such layers amplify float64 rounding (the frameworks sum in
    different orders) by many orders of magnitude, so two equal models can
    differ by more than 1e-9 of scale (measured: ResNet18 at 8x8, gradient scale
    1.8e9, 3e-8 apart). The verdict stands; the note says where to look.
    """
    few = sorted(layer for layer, calls in bn_batches.items() if calls and min(c[2] for c in calls) <= FEW_VALUES)
    if not few:
        return []
    named = ", ".join(f"`{layer}`" for layer in few[:3]) + (f" and {len(few) - 3} more" if len(few) > 3 else "")
    return [f"train-mode BatchNorm over {FEW_VALUES} or fewer values per channel ({named}): such a step is "
            f"ill-conditioned and magnifies float64 rounding, so equal models can fail here; check at a larger "
            f"input_shape (batch or spatial size) to tell a difference from rounding"]


def _in_source_naming(pair: TwinPair, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candidate tensors under the reference's names and layouts (the transfer rules, backwards).

    Mapped into slots of the values' own floating dtype: the transfer casts to its
    target slots' dtype, and a float64 result must not be rounded to the float32
    twin's dtype on the way (nor a float32 one copied into float64: a model's worth
    of copies per case, which the comparison widens block by block anyway).
    """
    dtype = _floating_dtype(values)
    if dtype not in pair.mapping_slots:  # one set per dtype: a large model has thousands of slots
        pair.mapping_slots[dtype] = widened(pair.src_slots, dtype)
    mapped, _ = pair.models.transfer(values, pair.dst_fw, pair.src_fw, pair.mapping_slots[dtype], complete=False)
    return mapped


def _floating_dtype(values: dict[str, np.ndarray]) -> str:
    """The one floating dtype of `values`, else float64 (none, or several)."""
    kinds = {np.dtype(v.dtype) for v in values.values() if np.issubdtype(np.dtype(v.dtype), np.floating)}
    return str(kinds.pop()) if len(kinds) == 1 else "float64"


def widened(slots: dict[str, Slot], dtype: str = "float64") -> dict[str, Slot]:
    """The same slots with every floating tensor in `dtype` (float64 by default), so mapping through them
    loses nothing."""
    return {k: dataclasses.replace(s, dtype=dtype) if np.issubdtype(np.dtype(s.dtype), np.floating) else s
            for k, s in slots.items()}


AS_BUILT_NOTE = ("as each factory builds it: a check runs both models with the source's value, so this row is where "
                 "two different buffers show; a buffer random by design must be given the same values on both sides")


def _buffers_as_built(pair: TwinPair, built: BuiltTwins, tol: Tolerance) -> list[Comparison]:
    """A pair's own buffers (not a standard layer's) as the two factories build them, in the reference's naming.

    A check draws every tensor in the source and transfers it, so a buffer
    (a relative-position index, an attention mask) runs with the source's value
    on both sides: a paddle factory that builds a wrong index passed. Integers
    are compared exactly, floats within the tolerance (in float64: `built` holds
    float64 twins where there are any).
    """
    src_model, src_slots, src_custom = built.get(pair.src_fw)
    dst_model, dst_slots, dst_custom = built.get(pair.dst_fw)
    keys = [k for k, s in src_slots.items() if s.kind not in STANDARD_KINDS and not s.trainable and k in src_custom]
    if not keys:
        return []
    theirs = {k: v for k, v in dst_custom.items() if k in dst_slots and not dst_slots[k].trainable}
    mapped = _in_source_naming(pair, theirs)
    rows = []
    for key in keys:
        if key not in mapped:
            continue  # the other side has no counterpart: the transfer reports it
        ours, other = np.asarray(src_custom[key]), np.asarray(mapped[key])
        name = f"{key} [as built]"
        if np.issubdtype(ours.dtype, np.floating) and np.issubdtype(other.dtype, np.floating):
            rows.append(compare(name, "buffer", other, ours, tol, AS_BUILT_NOTE))
        elif ours.shape != other.shape:
            rows.append(_exact_row(name, False, f"shapes {list(other.shape)} and {list(ours.shape)}; "
                                   + AS_BUILT_NOTE, tol, "buffer"))
        else:
            differ = int(np.count_nonzero(ours != other))
            worst = float(np.max(np.abs(ours.astype(np.float64) - other.astype(np.float64)))) if differ else 0.0
            rows.append(Comparison(name, "buffer", worst, math.inf if differ else 0.0, math.nan if differ else 1.0,
                                   not differ, f"integers, compared exactly ({differ} of {ours.size} differ); "
                                   + AS_BUILT_NOTE, tol.atol, tol.rtol, math.inf if differ else 0.0))
    return rows


def _trainable_flags(pair: TwinPair, tol: Tolerance) -> list[Comparison]:
    """A tensor trained on one side and frozen on the other is a difference, whichever side is the source."""
    src = {trainable_key(s, pair.src_fw) for s in pair.src_slots.values() if s.trainable}
    dst_slots, _ = renamed_slots(pair.dst_slots, pair.models.layer_map(pair.dst_fw, pair.src_fw))
    dst = {trainable_key(s, pair.dst_fw) for s in dst_slots.values() if s.trainable}
    return [Comparison(key, "trainable", math.inf, math.inf, math.nan, False,
                       f"trainable in {pair.src_fw if key in src else pair.dst_fw} only", tol.atol, tol.rtol,
                       math.inf)
            for key in sorted(src ^ dst)]


def _other_buffers(pair: TwinPair, ref, got, ref64, got64, judged: Judge) -> list[Comparison]:
    """State other than parameters and BatchNorm statistics, after the train step (an EMA, a step counter)."""
    got_state = _in_source_naming(pair, got.state)
    got_state64 = _in_source_naming(pair, got64.state) if got64 is not None else {}
    out = []
    for key, slot in pair.src_slots.items():
        if slot.trainable or slot.kind == "batchnorm" or key not in got_state or key not in ref.state:
            continue
        if np.issubdtype(ref.state[key].dtype, np.floating):
            out.append(judged(key, "buffer", got_state[key], ref.state[key], got_state64.get(key),
                              ref64.state.get(key) if ref64 is not None else None))
        else:
            exact = np.array_equal(got_state[key], ref.state[key])
            out.append(Comparison(key, "buffer", 0.0 if exact else math.inf, 0.0 if exact else math.inf,
                                  1.0 if exact else math.nan, exact, "integers: compared exactly", judged.tol.atol,
                                  judged.tol.rtol, 0.0 if exact else math.inf))
    return out


def momenta_in_source_naming(pair: TwinPair) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(candidate's, reference's) BatchNorm momenta as torch states them, both by the reference's layer names."""
    from weight_transfer.transfer import map_layer_name

    oriented = pair.models.layer_map(pair.dst_fw, pair.src_fw)
    got = {map_layer_name(name, oriented): w for name, w in pair.dst.bn_momenta(pair.dst_model).items()}
    return got, pair.src.bn_momenta(pair.src_model)


def bn_momentum_rows(layers: dict[str, dict[str, str]], got_momenta: dict[str, float | None],
                     ref_momenta: dict[str, float | None], ref_fw: str, got_fw: str,
                     tol: Tolerance) -> list[Comparison]:
    """Each BatchNorm's momentum, compared exactly as the frameworks apply it (paddle's `momentum` weighs the
    running value and is held in float32: torch's 0.1 is paddle's 0.9)."""
    rows = []
    for layer in layers:
        if layer not in got_momenta or layer not in ref_momenta:
            continue
        weights = {got_fw: got_momenta[layer], ref_fw: ref_momenta[layer]}
        if set(weights) != {"torch", "paddle"}:
            continue
        torch_weight, paddle_weight = weights["torch"], weights["paddle"]
        same = same_bn_update(torch_weight, paddle_weight)
        paddle_momentum = 1.0 - paddle_weight
        if torch_weight is None:
            how = "torch's cumulative average (momentum None) has no paddle counterpart"
        elif same:
            how = f"torch momentum {torch_weight:g} = paddle momentum {paddle_momentum:g}"
        else:
            how = (f"torch momentum {torch_weight:g} vs paddle momentum {paddle_momentum:g}: paddle's weighs the "
                   f"running value, its counterpart of torch's {torch_weight:g} is {1.0 - torch_weight:g}")
        rows.append(_exact_row(f"{layer}.momentum", same, how, tol, category="bn_momentum"))
    return rows


def bn_layers(slots: dict[str, Slot]) -> dict[str, dict[str, str]]:
    """BatchNorm layer name -> {"mean": key, "var": key} of its running statistics."""
    by_layer: dict[str, dict[str, str]] = {}
    for key, slot in slots.items():
        if _is_running_mean(slot):
            by_layer.setdefault(slot.layer, {})["mean"] = key
        elif _is_running_var(slot):
            by_layer.setdefault(slot.layer, {})["var"] = key
    return {layer: keys for layer, keys in by_layer.items() if len(keys) == 2}


def running_stat_comparisons(layer: str, keys: dict[str, str], start: dict[str, np.ndarray], ref_fw: str,
                             got_fw: str, ref_state: dict[str, np.ndarray], got_state: dict[str, np.ndarray],
                             calls: list, judged, ref_state64=None, got_state64=None, calls64=None,
                             start64=None, got_start=None, got_start64=None,
                             rule: str | None = None,
                             new_weights: tuple[float | None, float | None] | None = None) -> list[Comparison]:
    """Both sides' running statistics of one BatchNorm against their own framework's rule.

    `start` is the reference's state before the step (`got_start` the
    candidate's, when it differs) and `calls` the reference's recorded batch
    statistics (float64 counterparts optional: the float32 rule). The
    candidate is judged over the reference's batches, so an upstream shift a
    BatchNorm hides from the output still shows; the reference is judged over
    the same batches, so a wrong update rule shows in either direction.
    `rule` is the one rule both sides follow under a spec's `bn_stats: torch|paddle`;
    None: each side its own framework's. `new_weights`: (candidate's, reference's)
    momentum of this layer as torch states it (`bn_momenta`); None: the defaults.
    """
    out = []
    got_start = start if got_start is None else got_start
    got_start64 = start64 if got_start64 is None else got_start64
    got_weight, ref_weight = new_weights or (BN_MOMENTUM_TORCH, BN_MOMENTUM_TORCH)
    for side_fw, state, state64, first, first64, suffix, weight in (
            (got_fw, got_state, got_state64, got_start, got_start64, "", got_weight),
            (ref_fw, ref_state, ref_state64, start, start64, f" [{ref_fw}]", ref_weight)):
        side_rule = rule or side_fw
        mean, var = replay_running_stats(first[keys["mean"]], first[keys["var"]], calls, side_rule, weight)
        mean64 = var64 = None
        if calls64 is not None and state64 is not None:
            mean64, var64 = replay_running_stats(first64[keys["mean"]], first64[keys["var"]], calls64, side_rule,
                                                 weight)
        note = f"{side_rule} rule over {ref_fw} batches, n={calls[0][2]}"
        # a mean is judged against the spread of the values it averages: where the batch mean is zero in exact
        # arithmetic (a bias-free conv after a zero-bias BatchNorm) the running mean is rounding noise alone
        spread = float(np.linalg.norm(np.sqrt(np.maximum(var64 if var64 is not None else var, 0.0))))
        out.append(judged(keys["mean"] + suffix, "running_stat", state[keys["mean"]], mean,
                          state64[keys["mean"]] if state64 is not None else None, mean64, note, scale=spread))
        out.append(judged(keys["var"] + suffix, "running_stat", state[keys["var"]], var,
                          state64[keys["var"]] if state64 is not None else None, var64, note))
    return out


def _running_stats(pair: TwinPair, ref, got, ref64, got64, judged: Judge, notes: list[str]) -> list[Comparison]:
    """Both sides' running statistics, each against its own framework's rule over the reference's batches."""
    got_state = _in_source_naming(pair, got.state)
    got_state64 = _in_source_naming(pair, got64.state) if got64 is not None else None
    layers = bn_layers(pair.src_slots)
    # the candidate's running statistics before the step (not its whole state: that is a model's worth of copies)
    got_start = _in_source_naming(pair, {k: v for k, v in pair.dst_init.items()
                                         if k in pair.dst_slots and pair.dst_slots[k].kind == "batchnorm"
                                         and not pair.dst_slots[k].trainable})
    stat_keys = [key for keys in layers.values() for key in keys.values()]
    # once per case, not once per layer; the statistics only, not a model's worth of copies
    start64 = _as64({k: pair.src_init[k] for k in stat_keys}) if ref64 is not None else None
    got_start64 = _as64(got_start) if ref64 is not None else None
    got_momenta, ref_momenta = momenta_in_source_naming(pair)
    out = bn_momentum_rows(layers, got_momenta, ref_momenta, pair.src_fw, pair.dst_fw, judged.tol)
    for layer, keys in layers.items():
        calls = ref.bn_batches.get(layer, [])
        if not calls:
            notes.append(f"{layer}: BatchNorm not run in train mode; running statistics not compared")
            continue
        if len(calls) > 1:
            notes.append(f"{layer}: BatchNorm ran {len(calls)} times per step; compared by replaying each call")
        out += running_stat_comparisons(
            layer, keys, pair.src_init, pair.src_fw, pair.dst_fw, ref.state, got_state, calls, judged,
            ref64.state if ref64 is not None else None, got_state64,
            ref64.bn_batches.get(layer) if ref64 is not None else None, start64,
            got_start=got_start, got_start64=got_start64, rule=shared_bn_rule(pair.models.spec),
            new_weights=(got_momenta.get(layer, BN_MOMENTUM_TORCH), ref_momenta.get(layer, BN_MOMENTUM_TORCH)))
    if layers:
        rule = shared_bn_rule(pair.models.spec)
        notes.append(VAR_RULE if rule is None else
                     f"running statistics of both sides compared under the spec's `bn_stats: {rule}`: both twins "
                     f"fold batches by {rule}'s rule, replayed over the reference's batch statistics")
    return out
