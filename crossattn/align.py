"""N training steps side by side: the "training alignment" step of a model port.

From the same initial weights (drawn in the source framework, transferred to the
other) and the same batches, both frameworks take N optimizer steps with the
training loops' own step (`train_step`: forward, cross-entropy, backward,
optimizer) and optimizer (`make_optimizer`, with its translations). After each
step the loss of each framework, their difference, and every trainable tensor
(the candidate's transferred into the source's naming) are judged; at the end
every parameter, buffer and optimizer moment. The first step where anything
leaves tolerance is marked, with the tensor that drifted most.

Inputs are standard-normal arrays of the pair's input shape (batch size
replaced); labels are class indices for a cross-entropy over axis 1 of the
output (per position for dense outputs). Dropout is held off in both
frameworks: its masks come from each framework's own generator and cannot be
made equal without replacing the framework's op, so a step with dropout would
compare two random draws. BatchNorm runs in train mode by default (batch
statistics, running statistics moved by the shared `bn_stats` rule) or in
eval mode (`bn_train=False`).

float32 runs also step both frameworks in float64 from the same weights and
judge each tensor by `check`'s float32 rule (crossattn.compare.judge): the two
float64 trajectories must agree, and neither float32 trajectory may be much
further from its own float64 trajectory than the other is, whichever framework
is the reference.

That rule is sound for one step from a shared state. Over many free-running
steps, two equal twins' float32 states can part for no defect: a rounding-level
difference puts a ReLU input or a max-pool tie on the other side of its kink,
the gradient jumps, and the optimizer carries it on. So where a float32 step
fails the rule while the float64 trajectories still agree (after the last step:
on everything the final state is judged on), the step is redone from the
reference's float32 state before it (weights, buffers, optimizer state) loaded
into the other three sides, and judged again: if it passes, the row passes as
re-anchored and the run continues from there; if not, it is drift. float64 runs
never re-anchor. A kink crossed by the redone step's own rounding still fails,
and since the anchor is the reference's state, such a crossing can depend on
which framework is the reference (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from crossattn.bn_stats import bn_stats_rule
from crossattn.compare import Comparison, compare, judge as judge_float32
from crossattn.errors import CrossattnError
from crossattn.init import initial_state, padding_rows_zeroed
from crossattn.tolerances import Tolerance, tolerance_for
from crossattn.training.config import TrainConfig
from crossattn.training.schedule import lr_at
from weight_transfer import optimizer_state

FRAMEWORKS = ("torch", "paddle")
REANCHOR_NOTE = ("re-anchored: free-running float32 trajectories parted at a non-smooth point; the step from a "
                 "shared state agrees")
SECOND_BATCH_NOTE = ("the step from the shared state failed on float32 rounding alone (float64 agreed), a second "
                     "batch from that state passes: a near-tie at a non-smooth point of this batch")
#: seeds the second batch a step from a shared state is judged on (see `align`)
SECOND_BATCH = 7919
#: float32: when both float32 trajectories are this far (of scale) from their float64 ones, all four sides
#: are re-synchronised on the reference's float32 state. The float32 rule compares the two distances, so
#: left to grow they would let a defect of that size pass; 1e-4 is about 800 float32 epsilons.
RESYNC_DRIFT = 1e-4
#: the TrainConfig fields align takes (optimizer, schedule); a schedule's "epoch" is one step here
CONFIG_KEYS = ("optimizer", "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "momentum",
               "nesterov", "schedule", "warmup_epochs", "step_epochs", "step_gamma", "min_lr", "bn_stats")


@dataclasses.dataclass(frozen=True)
class AlignSettings:
    steps: int = 20
    batch_size: int = 4
    dtype: str = "float64"
    source: str = "torch"  # the framework whose weights are drawn and which is the reference
    bn_train: bool = True
    seed: int = 0
    tol: Tolerance | None = None  # None: crossattn.tolerances for the dtype

    @property
    def target(self) -> str:
        return "paddle" if self.source == "torch" else "torch"

    @property
    def tolerance(self) -> Tolerance:
        return self.tol or tolerance_for(self.dtype)


@dataclasses.dataclass
class StepRow:
    step: int  # 1-based
    lr: float
    loss: dict[str, float]
    loss_diff: float
    param_norm_rel: float  # ||candidate - reference|| / ||reference|| over all trainable tensors together
    worst: Comparison  # the trainable tensor (or the loss) furthest outside / closest to its bound
    passed: bool
    #: float32 only: the free-running step's worst comparison where it failed the rule while float64 agreed,
    #: so the step was redone from the reference's state; `worst` and `passed` are then the redone step's
    #: (after the last step including the final state's parameters, buffers and moments)
    parted: Comparison | None = None
    #: float32 only: the worst comparison of the step from the shared state where that failed on rounding
    #: alone and a second batch from the same state passed (`worst` and `passed` are then the second batch's)
    near_tie: Comparison | None = None
    #: float32 only: after this step all four sides were put on the reference's float32 state (RESYNC_DRIFT)
    resynced: bool = False

    @property
    def reanchored(self) -> bool:
        """Passed by the step from a shared state after the free-running trajectories parted."""
        return self.parted is not None and self.passed

    def to_json(self) -> dict:
        reanchor = None if self.parted is None else {
            "passed": self.passed, "free_running_worst": self.parted.to_json(),
            "note": REANCHOR_NOTE if self.passed else "the step from a shared state fails too: drift"}
        if reanchor is not None and self.near_tie is not None:
            reanchor.update(note=SECOND_BATCH_NOTE, shared_state_worst=self.near_tie.to_json())
        return {"step": self.step, "lr": self.lr, "loss": self.loss, "loss_diff": self.loss_diff,
                "param_norm_rel": self.param_norm_rel, "worst": self.worst.to_json(), "passed": self.passed,
                "reanchored": reanchor, "resynced": self.resynced}


@dataclasses.dataclass
class AlignReport:
    pair: str
    settings: AlignSettings
    config: TrainConfig
    rows: list[StepRow]
    final: list[Comparison]  # every parameter, buffer and optimizer moment after the last step
    notes: list[str]

    @property
    def first_drift(self) -> StepRow | None:
        return next((row for row in self.rows if not row.passed), None)

    @property
    def passed(self) -> bool:
        return self.first_drift is None and all(c.passed for c in self.final)

    @property
    def reanchors(self) -> int:
        """Steps passed from a shared state after the float32 trajectories parted."""
        return sum(row.reanchored for row in self.rows)

    @property
    def worst_final(self) -> Comparison | None:
        return _worst(self.final) if self.final else None

    def to_json(self) -> dict:
        drift = self.first_drift
        tol = self.settings.tolerance
        return {"pair": self.pair, "passed": self.passed,
                "settings": {**dataclasses.asdict(self.settings), "tol": {"atol": tol.atol, "rtol": tol.rtol},
                             "target": self.settings.target},
                "optimizer": {k: getattr(self.config, k) for k in CONFIG_KEYS},
                "first_drift": None if drift is None else {"step": drift.step, "tensor": drift.worst.tensor},
                "reanchors": self.reanchors,
                "steps": [row.to_json() for row in self.rows],
                "final": [c.to_json() for c in self.final], "notes": self.notes}


def _worst(results: list[Comparison]) -> Comparison:
    """The failing comparison furthest outside its bounds; if none fails, the one closest to them."""
    return max(results, key=lambda c: (not c.passed, c.severity))


def judge(name: str, category: str, candidate: np.ndarray, reference: np.ndarray, tol: Tolerance,
          exact: tuple[np.ndarray | None, np.ndarray | None] | None = None, scale: float | None = None) -> Comparison:
    """The one place a pair of tensors is judged; float32 runs pass `exact`, the (candidate, reference)
    float64 results, and are judged by check's float32 rule. `scale` is a family's scale (an optimizer
    moment among its kind: a bias before a BatchNorm has a zero gradient and a momentum of pure rounding)."""
    if exact is None or exact[0] is None or exact[1] is None:
        return compare(name, category, candidate, reference, tol, scale=scale)
    return judge_float32(name, category, reference, candidate, exact[1], exact[0], tol, scale=scale)


class _Side:
    """One framework's model, optimizer and step, driven through its training loop's functions."""

    def __init__(self, pair: Any, framework: str, dtype: str, config: TrainConfig, state: dict[str, np.ndarray],
                 bn_train: bool) -> None:
        from crossattn.frameworks import adapter, require

        require(framework)
        self.framework = framework
        self.fw = adapter(framework)
        self.loop = __import__(f"{framework}_impl.train", fromlist=["train_step"])
        self.layers = __import__(f"{framework}_impl.layers", fromlist=["apply_bn_stats"])
        self.fw.setup("cpu")
        self.config = config
        self.model = self.fw.to_dtype(pair.build(framework), dtype)
        slots = self.fw.slots(self.model)
        self.fw.load_state(self.model, {k: np.asarray(v, dtype=slots[k].dtype) if k in slots else v
                                        for k, v in state.items()})
        self.layers.apply_bn_stats(self.model, config.bn_stats)
        self.optimizer = self.loop.make_optimizer(self.model, config)
        self.held_dropout = self.loop.set_train_mode(self.model, bn_train)
        self.dropout_calls = self.fw.dropout_calls(self.model)  # dropout called as a function, held off
        self.steps = 0

    def step(self, x: np.ndarray, labels: np.ndarray, lr: float) -> float:
        loss = self.loop.step_arrays(self.model, self.optimizer, x, labels, lr, self.dropout_calls)
        self.steps += 1
        return loss

    def state(self) -> dict[str, np.ndarray]:
        return self.fw.state(self.model)

    def moments(self) -> optimizer_state.OptimizerState:
        return self.loop.optimizer_record(self.model, self.optimizer, self.config, self.steps)

    def snapshot(self) -> tuple[dict[str, np.ndarray], optimizer_state.OptimizerState]:
        """Model state (weights, BatchNorm buffers) and optimizer state, copied: the optimizer's moments
        are updated in place by its next step."""
        record = self.moments()
        copied = {m: {k: np.array(v) for k, v in values.items()} for m, values in record.moments.items()}
        return self.state(), dataclasses.replace(record, moments=copied)

    def load_from(self, snapshot: tuple[dict[str, np.ndarray], optimizer_state.OptimizerState], pair: Any) -> None:
        """Another side's snapshot as this side's own state: weights and buffers through the pair's transfer
        rules, moments and step count through optimizer_state.translate, all cast to this side's dtype."""
        state, record = snapshot
        slots = self.fw.slots(self.model)
        if record.framework != self.framework:
            state, _ = pair.transfer(state, record.framework, self.framework,
                                     context=f"{pair.origin}: re-anchoring {record.framework} -> {self.framework}")
        record = optimizer_state.translate(record, slots, self.framework, f"{record.framework} optimizer state",
                                           pair=pair)
        self.fw.load_state(self.model, {k: np.asarray(v, dtype=slots[k].dtype) for k, v in state.items()})
        moments = {m: {k: np.asarray(v, dtype=slots[k].dtype) for k, v in values.items()}
                   for m, values in record.moments.items()}
        self.loop.load_optimizer_record(self.model, self.optimizer, dataclasses.replace(record, moments=moments))
        self.steps = record.step


def align(pair: Any, config: TrainConfig, settings: AlignSettings,
          progress: Callable[[int, int], None] | None = None) -> AlignReport:
    """Run `settings.steps` optimizer steps of `pair` in both frameworks and judge every step."""
    from crossattn.frameworks import adapter

    if pair.input_shape is None:
        raise CrossattnError(f"{pair.origin}: no input shape; add `input_shape` to the spec or pass --input-shape")
    if settings.steps < 1 or settings.batch_size < 1:
        raise CrossattnError("--steps and --batch-size must be at least 1")
    src, dst, tol = settings.source, settings.target, settings.tolerance
    config = config.replace(bn_stats=bn_stats_rule(config.bn_stats, getattr(pair, "spec", None)))
    source_model = pair.build(src)
    fw = adapter(src)
    drawn = initial_state(fw.slots(source_model), fw.state(source_model), src, settings.seed, "default")
    drawn = padding_rows_zeroed(pair, fw, source_model, drawn)
    del source_model
    moved, _ = pair.transfer(drawn, src, dst, context=f"{pair.origin}: initial weights {src} -> {dst}")
    sides = {src: _Side(pair, src, settings.dtype, config, drawn, settings.bn_train),
             dst: _Side(pair, dst, settings.dtype, config, moved, settings.bn_train)}
    exact = None
    if settings.dtype != "float64":  # both frameworks again in float64: the float32 rule's truths
        exact = {src: _Side(pair, src, "float64", config, drawn, settings.bn_train),
                 dst: _Side(pair, dst, "float64", config, moved, settings.bn_train)}
    notes = list(getattr(pair, "notes", []))
    held = sorted(set(sides[src].held_dropout) | set(sides[dst].held_dropout))
    if held:
        notes.append(f"dropout held off (run as at inference) in both frameworks: {', '.join(held[:5])}"
                     + (f" and {len(held) - 5} more" if len(held) > 5 else "") +
                     "; its masks come from each framework's own generator")
    shape = (settings.batch_size, *pair.input_shape[1:])
    classes, label_shape = _output_layout(sides[src], shape, settings.dtype)
    src_slots = sides[src].fw.slots(sides[src].model)
    src_slots64 = exact[src].fw.slots(exact[src].model) if exact else src_slots  # float64: no cast on the way
    trainable = [k for k, s in src_slots.items() if s.trainable]

    def judged(losses: dict[str, float], exact_loss: dict[str, float] | None,
               last: bool) -> tuple[list[Comparison], list[Comparison], dict]:
        """The loss and every trainable tensor after a step, judged; after the last step also every parameter,
        buffer and optimizer moment; and the states they were read from."""
        states = {"ref": sides[src].state(), "cand": _in_source_naming(pair, sides[dst].state(), dst, src, src_slots),
                  "exact": ({src: exact[src].state(), dst: _in_source_naming(pair, exact[dst].state(), dst, src,
                                                                             src_slots64)} if exact else None)}
        ref, cand = states["ref"], states["cand"]
        results = [judge("loss", "loss", np.array(losses[dst]), np.array(losses[src]), tol,
                         (np.array(exact_loss[dst]), np.array(exact_loss[src])) if exact_loss else None)]
        results += [judge(k, "param", cand[k], ref[k], tol, _truths(states["exact"], dst, src, k)) for k in trainable]
        final = []
        if last:
            final = [judge(k, "param" if src_slots[k].trainable else "buffer", cand[k], ref[k], tol,
                           _truths(states["exact"], dst, src, k)) for k in src_slots if k in cand]
            final += _moment_comparisons(pair, sides, exact, src, dst, tol)
        return results, final, states

    def float64_agrees(states: dict, exact_loss: dict[str, float], last: bool) -> bool:
        """Whether the float64 trajectories agree after a step on what was judged: only then can a float32
        failure be a kink crossing rather than a difference between the twins."""
        ref64, cand64 = states["exact"][src], states["exact"][dst]
        checks = [compare("loss", "loss", np.array(exact_loss[dst]), np.array(exact_loss[src]), tol)]
        checks += [compare(k, "param", cand64[k], ref64[k], tol) for k in (ref64 if last else trainable) if k in cand64]
        if last:
            checks += _moment_comparisons(pair, exact, None, src, dst, tol)  # float64 moments, judged directly
        return all(c.passed for c in checks)

    def drifted(states: dict) -> bool:
        """Whether both float32 trajectories have left their float64 ones by RESYNC_DRIFT of scale."""
        ref64, cand64 = states["exact"][src], states["exact"][dst]

        def distance(a: dict, b: dict) -> float:
            return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in trainable))

        scale = math.sqrt(sum(float(np.sum(ref64[k] ** 2)) for k in trainable)) or 1.0
        return min(distance(states["ref"], ref64), distance(states["cand"], cand64)) > RESYNC_DRIFT * scale

    def _second_batch(step: int, anchor: Any, lr: float, last: bool) -> tuple[list[Comparison], list[Comparison]] | None:
        """The same step from the same shared state on a second batch, when the first failed on float32
        rounding alone: a ReLU input or max-pool near-tie within rounding of its kink belongs to one batch, a
        float32 defect to every batch. Passing, the run goes on from the reference's step on the real batch
        (what each side held before is restored if not)."""
        everyone = [sides[src], sides[dst], exact[src], exact[dst]]
        kept = [side.snapshot() for side in everyone]
        for side in everyone:
            side.load_from(anchor, pair)
        rng2 = np.random.default_rng([settings.seed, 7, step, SECOND_BATCH])
        x2 = rng2.standard_normal(shape).astype(settings.dtype)
        labels2 = rng2.integers(0, classes, size=label_shape).astype(np.int64)
        losses2 = {fw_name: side.step(x2, labels2, lr) for fw_name, side in sides.items()}
        exact2 = {fw_name: side.step(x2.astype(np.float64), labels2, lr) for fw_name, side in exact.items()}
        results2, final2, _ = judged(losses2, exact2, last)
        passed = all(c.passed for c in results2 + final2)
        for side, snapshot in zip(everyone, kept):
            side.load_from(kept[0] if passed else snapshot, pair)
        return (results2, final2) if passed else None

    rows: list[StepRow] = []
    for step in range(settings.steps):
        rng = np.random.default_rng([settings.seed, 7, step])
        x = rng.standard_normal(shape).astype(settings.dtype)
        labels = rng.integers(0, classes, size=label_shape).astype(np.int64)
        lr = lr_at(config, step, 1)
        last = step == settings.steps - 1
        # float32, before the first drift: the reference's state before the step, to re-anchor on (at the
        # first step a redo is the step itself; the anchor then serves a second batch)
        anchor = sides[src].snapshot() if exact and all(row.passed for row in rows) else None
        losses = {fw_name: side.step(x, labels, lr) for fw_name, side in sides.items()}
        exact_loss = {fw_name: side.step(x.astype(np.float64), labels, lr) for fw_name, side in exact.items()} \
            if exact else None
        results, final, states = judged(losses, exact_loss, last)
        ref_state, cand_state = states["ref"], states["cand"]
        diff = math.sqrt(sum(float(np.sum((cand_state[k].astype(np.float64) - ref_state[k]) ** 2))
                             for k in trainable))
        norm = math.sqrt(sum(float(np.sum(ref_state[k].astype(np.float64) ** 2)) for k in trainable))
        parted = None
        if anchor is not None and not all(c.passed for c in results + final) and \
                float64_agrees(states, exact_loss, last):
            parted = _worst(results + final)
            for side in (sides[dst], exact[src], exact[dst]):
                side.load_from(anchor, pair)
            redone = {src: losses[src], dst: sides[dst].step(x, labels, lr)}  # the reference's step stands
            exact_loss = {fw_name: side.step(x.astype(np.float64), labels, lr) for fw_name, side in exact.items()}
            results, final, states = judged(redone, exact_loss, last)
        near_tie = None
        if parted is not None and not all(c.passed for c in results + final) and \
                float64_agrees(states, exact_loss, last):
            second = _second_batch(step, anchor, lr, last)
            if second is not None:
                near_tie, (results, final) = _worst(results + final), second
        verdict = results + final if parted is not None else results  # a redone row answers for what it redid
        passed = all(c.passed for c in verdict)
        resync = bool(exact) and passed and not last and all(row.passed for row in rows) and drifted(states)
        if resync:
            after = sides[src].snapshot()
            for side in (sides[dst], exact[src], exact[dst]):
                side.load_from(after, pair)
        rows.append(StepRow(step + 1, lr, {src: losses[src], dst: losses[dst]}, abs(losses[dst] - losses[src]),
                            diff / norm if norm else (0.0 if diff == 0 else math.inf), _worst(verdict),
                            passed, parted, near_tie, resync))
        if progress is not None:
            progress(step + 1, settings.steps)
    return AlignReport(pair.origin, settings, config, rows, final, notes + _functional_dropout(sides))


def _functional_dropout(sides: dict[str, _Side]) -> list[str]:
    """A note of the dropout calls, per framework, with their rates: plain dropout (a layer's or a function's)
    takes the mask of a stream both frameworks share, so where it sits and how it scales are in the trajectories;
    a rate of another kind that differs is a difference training would show, which align's held steps cannot."""
    from crossattn.check import MASKED_KINDS
    from crossattn.dropout_calls import layer_of

    said = {fw_name: {"masked": set(), "held": set()} for fw_name in sides}
    for fw_name, side in sides.items():
        for key, rate in side.dropout_calls.held.items():
            layer, kind = layer_of(key)
            said[fw_name]["masked" if kind.split("#")[0] in MASKED_KINDS else "held"].add(f"{key} (p={rate:g})")
    out = []
    for how, text in (("masked", "plain dropout applied with the masks of one stream both frameworks share (the n-th "
                                 "call the same mask)"),
                      ("held", "dropout called as a function held off (run as at inference)")):
        if any(said[fw][how] for fw in said):
            out.append(f"{text}: " + "; ".join(f"{fw}: {', '.join(sorted(said[fw][how])[:5]) or 'none'}"
                                               for fw in said))
    return out


def _truths(exact_state: dict[str, dict[str, np.ndarray]] | None, dst: str, src: str,
            key: str) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The (candidate, reference) float64 values of a tensor, for judge; None in float64 runs."""
    return (exact_state[dst].get(key), exact_state[src].get(key)) if exact_state else None


def _output_layout(side: _Side, shape: tuple[int, ...], dtype: str) -> tuple[int, tuple[int, ...]]:
    """Classes (axis 1 of the output) and the label shape, from one eval-mode forward of the source model."""
    seen: list[tuple[int, ...]] = []

    def cotangent(out_shape: tuple[int, ...]) -> np.ndarray:
        seen.append(tuple(out_shape))
        return np.zeros(out_shape, dtype=dtype)

    was_training = side.model.training
    side.fw.step(side.model, np.zeros(shape, dtype=dtype), cotangent, train=False)
    side.loop.set_train_mode(side.model, was_training)
    out = seen[0]
    if len(out) < 2 or out[1] < 2:
        raise CrossattnError(f"the model's output has shape {list(out)}; align trains with a cross-entropy "
                             f"over axis 1 and needs at least 2 classes there")
    return out[1], (out[0], *out[2:])


def _in_source_naming(pair: Any, state: dict[str, np.ndarray], framework: str, source: str,
                      source_slots: dict) -> dict[str, np.ndarray]:
    out, _ = pair.transfer(state, framework, source, target_slots=source_slots, complete=False,
                           context=f"{framework} state in {source} naming")
    return out


def _moment_comparisons(pair: Any, sides: dict[str, _Side], exact: dict[str, _Side] | None, src: str, dst: str,
                        tol: Tolerance) -> list[Comparison]:
    slots = sides[src].fw.slots(sides[src].model)
    ref = sides[src].moments()
    cand = optimizer_state.translate(sides[dst].moments(), slots, src, f"{dst} optimizer state", pair=pair)
    ref64 = exact[src].moments().moments if exact else {}
    cand64 = (optimizer_state.translate(exact[dst].moments(), exact[src].fw.slots(exact[src].model), src,
                                        f"{dst} float64 optimizer state", pair=pair).moments if exact else {})
    out = []
    for moment, values in ref.moments.items():
        scale = max((float(np.linalg.norm(v)) for v in values.values()), default=0.0)
        for key, value in values.items():
            other = cand.moments.get(moment, {}).get(key)
            if other is None:
                out.append(Comparison(f"{key} [{moment}]", "moment", math.inf, math.inf, math.nan, False,
                                      f"no {dst} {moment}", tol.atol, tol.rtol))
                continue
            truths = (cand64.get(moment, {}).get(key), ref64.get(moment, {}).get(key)) if exact else None
            out.append(judge(f"{key} [{moment}]", "moment", other, value, tol, truths, scale))
    if ref.step != cand.step:
        out.append(Comparison("optimizer step count", "moment", abs(ref.step - cand.step), math.inf, math.nan,
                              False, f"{src} {ref.step}, {dst} {cand.step}", tol.atol, tol.rtol))
    return out


def align_config(**values: Any) -> TrainConfig:
    """A TrainConfig holding align's optimizer and schedule (one schedule "epoch" = one step)."""
    steps = values.pop("steps")
    return TrainConfig(epochs=steps, **{k: v for k, v in values.items() if v is not None})


# --------------------------------------------------------------------------- output


def table(report: AlignReport) -> str:
    """One row per step, the first drifting step and the re-anchored ones marked; then the final worst tensors."""
    from crossattn.report import table as render

    src, dst = report.settings.source, report.settings.target
    drift = report.first_drift
    rows = []
    for row in report.rows:
        mark = ("<- first drift" if drift is not None and row.step == drift.step else
                "re-anchored, second batch" if row.reanchored and row.near_tie is not None else
                "re-anchored" if row.reanchored else "")
        rows.append([str(row.step), f"{row.lr:.3g}", f"{row.loss[src]:.10g}", f"{row.loss[dst]:.10g}",
                     f"{row.loss_diff:.2e}", f"{row.param_norm_rel:.2e}", row.worst.tensor,
                     f"{row.worst.severity:.2g}", "PASS" if row.passed else "FAIL", mark])
    text = render(rows, ["step", "lr", f"loss {src}", f"loss {dst}", "|diff|", "params norm-rel",
                         "worst tensor", "x tol", "verdict", ""])
    final_fail = [c for c in report.final if not c.passed]
    worst = report.worst_final
    tol = report.settings.tolerance
    lines = [text]
    if report.reanchors:
        lines.append(f"{report.reanchors} step(s) {REANCHOR_NOTE} (the float64 trajectories agreed; the run "
                     f"continued from there)")
    synced = [row.step for row in report.rows if row.resynced]
    if synced:
        lines.append(f"after step(s) {', '.join(map(str, synced))} both float32 trajectories were {RESYNC_DRIFT:g} of "
                     f"scale from their float64 ones: all sides re-synchronised on the reference's float32 state")
    ties = [row.step for row in report.rows if row.reanchored and row.near_tie is not None]
    if ties:
        lines.append(f"step(s) {', '.join(map(str, ties))}: {SECOND_BATCH_NOTE}")
    lines.append(f"after step {len(report.rows)}: {len(report.final)} tensors compared (parameters, buffers, "
                 f"optimizer moments), {len(final_fail)} outside tolerance"
                 + (f"; worst {worst.tensor} (max abs {worst.max_abs:.2e}, norm-rel {worst.norm_rel:.2e})"
                    if worst else ""))
    for c in sorted(final_fail, key=lambda c: -c.severity)[:10]:
        lines.append(f"  FAIL {c.tensor}: max abs {c.max_abs:.2e}, norm-rel {c.norm_rel:.2e}"
                     + (f" ({c.note})" if c.note else ""))
    verdict = ("PASS: every step within tolerance" + (f", {report.reanchors} re-anchored" if report.reanchors else "")
               if report.passed else
               f"FAIL: first drift at step {drift.step}, tensor {drift.worst.tensor}" if drift else
               "FAIL: the steps stayed within tolerance, the final state did not")
    lines.append(f"{verdict} ({report.settings.dtype}, atol {tol.atol:g}, rtol {tol.rtol:g}, "
                 f"{src} -> {dst})")
    return "\n".join(lines)


PLOT_HINT = "plot skipped: matplotlib is not installed; pip install 'crossattn[plot]' for the PNG"


def plot(report: AlignReport, path: Any) -> bool:
    """Both loss curves, and their difference and the parameters' norm-relative difference on a log axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    src, dst = report.settings.source, report.settings.target
    steps = [row.step for row in report.rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps, [row.loss[src] for row in report.rows], "-o", markersize=3, label=src)
    top.plot(steps, [row.loss[dst] for row in report.rows], "--x", markersize=4, label=dst)
    top.set_ylabel("training loss")
    top.legend()
    top.grid(alpha=0.3)
    tiny = np.finfo(np.float64).tiny
    bottom.semilogy(steps, [max(row.loss_diff, tiny) for row in report.rows], "-o", markersize=3,
                    label="|loss difference|")
    bottom.semilogy(steps, [max(row.param_norm_rel, tiny) for row in report.rows], "-s", markersize=3,
                    label="parameters, norm-relative")
    bottom.axhline(report.settings.tolerance.rtol, color="grey", linestyle=":", label="rtol")
    for n, row in enumerate(row for row in report.rows if row.reanchored):
        bottom.axvline(row.step, color="orange", linestyle=":", alpha=0.7, label="re-anchored" if n == 0 else None)
    drift = report.first_drift
    if drift is not None:
        for axes in (top, bottom):
            axes.axvline(drift.step, color="red", alpha=0.5)
        bottom.annotate(f"first drift: {drift.worst.tensor}", (drift.step, report.settings.tolerance.rtol),
                        fontsize=8, color="red")
    bottom.set_xlabel("step")
    bottom.set_ylabel("difference")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    figure.suptitle(f"{report.pair}: {src} vs {dst}, {report.config.optimizer}, {report.settings.dtype}")
    figure.tight_layout()
    from crossattn.atomic import save_figure

    try:
        save_figure(figure, path, "--plot", dpi=120)
    finally:
        plt.close(figure)
    return True
