"""Layer-by-layer divergence: where two implementations first part ways, and which code is to blame.

Both models are traced through one step; every layer's inputs and output
(forward), the gradient arriving at it and the gradient its backward sends
to its inputs (backward) are matched by name — identical for twins, through
a name map for a user's own pair — and compared. Walking the reference's
forward events in order, the first difference names its source: a layer
whose inputs agree but whose output differs is itself wrong; a layer whose
input differs while every layer before it agrees was fed by wrong code
*between* layers, which belongs to the enclosing layer. The backward walk
does the same with arriving and leaving gradients.

Single-step mode feeds every candidate layer the reference layer's inputs,
and every candidate output the reference's incoming gradient, so errors do
not accumulate; the inputs the candidate's own code computed are still
recorded and compared, and the report adds the end-to-end comparison of an
unfed run. After a train-mode step the BatchNorm running statistics of both
sides (under the stated rule of `conventions.replay_running_stats`) and every
other buffer are compared too.

In float32 both models are traced in float64 as well and every tensor goes
through the float32 rule of `compare.judge`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from crossattn.conventions import BN_MOMENTUM_TORCH, shared_bn_rule
from crossattn.check import (BuiltTwins, Judge, _as64, _build, _buffers_as_built, _in_source_naming, _inputs, as_pair,
                             bn_layers, bn_momentum_rows,
                             few_values_per_channel, momenta_in_source_naming, param_grad_comparisons, prepare_pair,
                             probe_input, running_stat_comparisons, widened)
from crossattn.conventions import KEPT_CAST
from weight_transfer.transfer import map_layer_name
from crossattn.compare import Comparison
from crossattn.errors import CrossattnError
from crossattn.model_pair import ModelPair
from crossattn.spec import Spec
from crossattn.tolerances import Tolerance, tolerance_for
from crossattn.tracing import LayerTrace

ROUNDING_MARK = "known framework rounding"


@dataclasses.dataclass
class LayerRow:
    layer: str  # reference name (with #k for a repeated call)
    candidate: str  # the candidate's name for it
    output: Comparison
    grad: Comparison | None
    input: Comparison | None = None  # the inputs the candidate's own code computed for this layer
    input_grad: Comparison | None = None  # the gradient this layer's backward sends to its inputs


@dataclasses.dataclass
class Divergence:
    """Where an error first appears and the code it is attributed to."""

    layer: str  # the layer to blame ("" is the model)
    at: str  # the layer whose tensor first differs
    tensor: str  # output | input | grad | input_grad
    reason: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DiffReport:
    title: str
    direction: str
    mode: str
    single_step: bool
    rows: list[LayerRow]
    first_output: str | None  # first layer (forward order) whose output diverges
    first_grad: str | None  # first layer (backward order) whose incoming gradient diverges
    unmatched_reference: list[str]
    unmatched_candidate: list[str]
    forward: Divergence | None = None  # where the forward error first appears
    backward: Divergence | None = None  # where the backward error first appears
    end_to_end: list[Comparison] = dataclasses.field(default_factory=list)  # output and input.grad, unfed run
    buffers: list[Comparison] = dataclasses.field(default_factory=list)  # running statistics, other buffers
    #: every trainable parameter's gradient after the traced step (a parameter used by code between layers,
    #: detached or frozen on one side, differs here while every layer's output and gradients agree)
    param_grads: list[Comparison] = dataclasses.field(default_factory=list)
    rounding: list[str] = dataclasses.field(default_factory=list)  # known framework roundings, by layer
    #: the pair's own buffers as each factory builds them (check's `[as built]` rows): the traced run gives both
    #: models the source's value, so a wrong index or mask built by one factory shows only here
    as_built: list[Comparison] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.first_output is None and self.first_grad is None and self.forward is None
                and self.backward is None and all(c.passed for c in self.end_to_end)
                and all(c.passed for c in self.buffers) and all(c.passed for c in self.param_grads)
                and all(c.passed for c in self.as_built))

    def to_json(self) -> dict:
        return {"title": self.title, "direction": self.direction, "mode": self.mode,
                "single_step": self.single_step, "passed": self.passed, "first_output": self.first_output,
                "first_grad": self.first_grad,
                "forward_source": self.forward.to_json() if self.forward else None,
                "backward_source": self.backward.to_json() if self.backward else None,
                "end_to_end": [c.to_json() for c in self.end_to_end],
                "buffers": [c.to_json() for c in self.buffers],
                "param_grads": [c.to_json() for c in self.param_grads], "rounding": self.rounding,
                "as_built": [c.to_json() for c in self.as_built],
                "unmatched_reference": self.unmatched_reference, "unmatched_candidate": self.unmatched_candidate,
                "layers": [{"layer": r.layer, "candidate": r.candidate, "output": r.output.to_json(),
                            "grad": r.grad.to_json() if r.grad else None,
                            "input": r.input.to_json() if r.input else None,
                            "input_grad": r.input_grad.to_json() if r.input_grad else None} for r in self.rows]}


def map_call_key(key: str, name_map: Mapping[str, str]) -> str:
    """Map `layer#k` through a layer-name map by longest prefix, as the weight transfer does."""
    from weight_transfer.transfer import map_layer_name

    name, sep, call = key.partition("#")
    return map_layer_name(name, name_map) + sep + call


def _missing(name: str, category: str, note: str, tol: Tolerance) -> Comparison:
    return Comparison(name, category, math.inf, math.inf, math.nan, False, note, tol.atol, tol.rtol, math.inf)


def _worst(parts: list[Comparison]) -> Comparison:
    return max(parts, key=lambda c: (not c.passed, c.severity))


def _many(judged: Judge, name: str, category: str, got: list | None, ref: list, got64: list | None,
          ref64: list | None, absent: str) -> Comparison:
    """Compare lists of tensors (a layer's inputs, or the gradients it sends to them); the worst one counts."""
    if got is None or len(got) != len(ref):
        return _missing(name, category, absent if got is None else
                        f"{len(got)} floating tensors in the candidate, {len(ref)} in the reference", judged.tol)
    pairs = zip(got, ref, got64 or [None] * len(got), ref64 or [None] * len(ref))
    return _worst([judged(name, category, g, r, g64, r64) for g, r, g64, r64 in pairs])


def compare_traces(ref: LayerTrace, got: LayerTrace, name_map: Mapping[str, str], tol: Tolerance,
                   ref64: LayerTrace | None = None, got64: LayerTrace | None = None, fed: bool = False) -> tuple:
    """Rows in the reference's order, then the first divergences (raw and attributed) and the roundings noted."""
    judged = Judge(tol, ref64 is not None and got64 is not None)
    pick = (lambda trace, field, key: getattr(trace, field).get(key) if trace is not None else None)
    rows: dict[str, LayerRow] = {}
    matched = set()
    for key in ref.order:
        other = map_call_key(key, name_map)
        if other not in got.outputs:
            continue
        matched.add(other)
        output = judged(key, "layer_output", got.outputs[other], ref.outputs[key], pick(got64, "outputs", other),
                        pick(ref64, "outputs", key))
        grad = None
        if key in ref.grads and other in got.grads:
            grad = judged(key, "layer_grad", got.grads[other], ref.grads[key], pick(got64, "grads", other),
                          pick(ref64, "grads", key))
        elif key in ref.grads:  # the candidate cut the gradient flow here (a detach, a no-grad path)
            grad = _missing(key, "layer_grad", "no gradient reached this layer in the candidate", tol)
        inputs = None
        if ref.inputs.get(key):
            inputs = _many(judged, key, "layer_input", got.inputs.get(other), ref.inputs[key],
                           pick(got64, "inputs", other), pick(ref64, "inputs", key), "no inputs recorded")
        input_grad = None
        if ref.input_grads.get(key):
            input_grad = _many(judged, key, "layer_input_grad", got.input_grads.get(other), ref.input_grads[key],
                               pick(got64, "input_grads", other), pick(ref64, "input_grads", key),
                               "no gradient left this layer towards its inputs in the candidate")
        rows[key] = LayerRow(key, other, output, grad, inputs, input_grad)
    ordered = list(rows.values())
    first_output = next((r.layer for r in ordered if not r.output.passed), None)
    first_grad = next((r.layer for r in reversed(ordered) if r.grad is not None and not r.grad.passed), None)
    unmatched_ref = [k for k in ref.order if map_call_key(k, name_map) not in got.outputs]
    unmatched_got = [k for k in got.order if k not in matched]
    rounding: list[str] = []
    forward = _forward_source(ref, rows, rounding)
    # in an accumulated run a forward difference moves every backward after it: only a clean forward
    # lets the backward walk name a source (single-step runs each backward at the reference's values)
    backward = _backward_source(ref, got, rows, name_map, rounding) if forward is None or fed else None
    return ordered, first_output, first_grad, unmatched_ref, unmatched_got, forward, backward, rounding


def _name(layer: str | None) -> str:
    return f"`{layer}`" if layer else "the model"


def _note_rounding(result: Comparison | None, where: str, rounding: list[str]) -> None:
    """Note where a known framework rounding enters: the first tensor carrying it, not the ones downstream."""
    if result is None or not result.passed or ROUNDING_MARK not in result.note:
        return
    detail = result.note[result.note.index(ROUNDING_MARK):]
    factor = detail.split(",")[0]
    if not any(factor in note for note in rounding):
        rounding.append(f"{where}: {detail}; every tensor after it carries the same factor (passes; not a port bug)")


def _forward_source(ref: LayerTrace, rows: dict[str, LayerRow], rounding: list[str]) -> Divergence | None:
    for kind, key in ref.events:
        row = rows.get(key)
        if row is None:
            continue
        parent = ref.parent.get(key)
        if kind == "in" and row.input is not None:
            if not row.input.passed and parent is not None:
                return Divergence(parent, key, "input", f"the input of `{key}` differs while every layer before it "
                                  f"agrees: code of {_name(parent)} running between its layers computes it")
            _note_rounding(row.input, f"input of `{key}`", rounding)
        elif kind == "out":
            if not row.output.passed:
                inside = any(ref.parent.get(k) == key for k in rows)
                where = "its own code around the layers inside it" if inside else "its computation"
                return Divergence(key, key, "output", f"the output of {_name(key)} differs while its inputs"
                                  f"{' and every layer inside it' if inside else ''} agree: {where}")
            _note_rounding(row.output, f"output of {_name(key)}", rounding)
    return None


def _backward_source(ref: LayerTrace, got: LayerTrace, rows: dict[str, LayerRow], name_map: Mapping[str, str],
                     rounding: list[str]) -> Divergence | None:
    seen = set()
    for kind, key in ref.grad_events:
        row = rows.get(key)
        if row is None or (kind, key) in seen:
            continue
        seen.add((kind, key))
        outermost = key
        while outermost in ref.outer:  # the gradient arriving at a Sequential's last layer is the Sequential's
            outermost = ref.outer[outermost]
        parent = ref.parent.get(outermost)
        if kind == "grad" and row.grad is not None:
            if not row.grad.passed and parent is not None:
                return Divergence(parent, key, "grad", f"the gradient arriving at `{key}` differs while every "
                                  f"backward before it agrees: code of {_name(parent)} that consumes the output "
                                  f"of `{outermost}` (between its layers)")
            _note_rounding(row.grad, f"gradient arriving at {_name(key)}", rounding)
        elif kind == "input_grad" and row.input_grad is not None:
            if not row.input_grad.passed:
                if map_call_key(key, name_map) not in got.input_grads and parent is not None:
                    return Divergence(parent, key, "input_grad", f"no gradient flows into `{key}` in the candidate: "
                                      f"code of {_name(parent)} cuts the graph before it")
                return Divergence(key, key, "input_grad", f"the gradient arriving at {_name(key)} agrees but the "
                                  f"one its backward sends to its inputs differs: its backward")
            _note_rounding(row.input_grad, f"backward of {_name(key)}", rounding)
    return None


def _buffers(ref: LayerTrace, got_after_in_ref_naming: dict, got_before_in_ref_naming: dict, ref_slots: dict,
             ref_fw: str, got_fw: str, judged: Judge, ref64: LayerTrace | None = None,
             got_after64: dict | None = None, got_before64: dict | None = None,
             rule: str | None = None,
             momenta: tuple[dict, dict] = ({}, {})) -> list[Comparison]:
    """Running statistics of both sides under the stated rule (`rule`: a spec's shared `bn_stats`; `momenta`:
    (candidate's, reference's) BatchNorm momenta by reference layer name), then every other buffer, after a
    train step."""
    start64 = _as64(ref.state_before)  # once, not once per layer
    got_start64 = _as64(got_before_in_ref_naming) if got_before64 is not None else None
    layers = bn_layers(ref_slots)
    got_momenta, ref_momenta = momenta
    out = bn_momentum_rows(layers, got_momenta, ref_momenta, ref_fw, got_fw, judged.tol)
    for layer, keys in layers.items():
        calls = ref.bn_batches.get(layer)
        if not calls or keys["mean"] not in got_after_in_ref_naming:
            continue
        out += running_stat_comparisons(
            layer, keys, ref.state_before, ref_fw, got_fw, ref.state_after, got_after_in_ref_naming, calls, judged,
            ref64.state_after if ref64 is not None else None, got_after64,
            ref64.bn_batches.get(layer) if ref64 is not None else None,
            start64, got_start=got_before_in_ref_naming, got_start64=got_start64, rule=rule,
            new_weights=(got_momenta.get(layer, BN_MOMENTUM_TORCH), ref_momenta.get(layer, BN_MOMENTUM_TORCH)))
    for key, slot in ref_slots.items():
        if slot.trainable or slot.kind == "batchnorm" or key not in got_after_in_ref_naming:
            continue
        value, other = ref.state_after[key], got_after_in_ref_naming[key]
        if np.issubdtype(value.dtype, np.floating):
            out.append(judged(key, "buffer", other, value, (got_after64 or {}).get(key),
                              ref64.state_after.get(key) if ref64 is not None else None))
        else:
            same = bool(np.array_equal(other, value))
            out.append(Comparison(key, "buffer", 0.0 if same else math.inf, 0.0 if same else math.inf,
                                  1.0 if same else math.nan, same, "integers: compared exactly", judged.tol.atol,
                                  judged.tol.rtol, 0.0 if same else math.inf))
    return out


def trace_pair(ref_adapter, ref_model, got_adapter, got_model, x: np.ndarray, cotangent, train: bool,
               name_map: Mapping[str, str], single_step: bool) -> tuple[LayerTrace, LayerTrace, LayerTrace]:
    """(reference, candidate, candidate unfed): in accumulated mode the last two are the same trace."""
    ref = ref_adapter.trace(ref_model, x, cotangent, train)
    if not single_step:
        got = got_adapter.trace(got_model, x, cotangent, train)
        return ref, got, got
    feed = {map_call_key(k, name_map): v for k, v in ref.inputs.items()}
    feed_grads = {map_call_key(k, name_map): v for k, v in ref.grads.items()}
    got = got_adapter.trace(got_model, x, cotangent, train, feed=feed, feed_grads=feed_grads)
    after = got_adapter.state(got_model)
    got_adapter.load_state(got_model, got.state_before)
    unfed = got_adapter.trace(got_model, x, cotangent, train)
    got_adapter.load_state(got_model, after)
    return ref, got, unfed


def _end_to_end(judged: Judge, ref: LayerTrace, unfed: LayerTrace, ref64: LayerTrace | None,
                unfed64: LayerTrace | None) -> list[Comparison]:
    return [judged("output (end to end)", "output", unfed.output, ref.output,
                   unfed64.output if unfed64 is not None else None, ref64.output if ref64 is not None else None),
            judged("input.grad (end to end)", "input_grad", unfed.input_grad, ref.input_grad,
                   unfed64.input_grad if unfed64 is not None else None,
                   ref64.input_grad if ref64 is not None else None)]


def diff_spec(spec: Spec | ModelPair, direction: str = "torch->paddle", mode: str = "eval", single_step: bool = False,
              tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
              after_transfer=None, probe: str = "normal") -> DiffReport:
    """Trace a pair (weights drawn in the source and transferred) and compare layer by layer."""
    tol = tol or tolerance_for(dtype)
    train = mode == "train"
    built = BuiltTwins(as_pair(spec), dtype)
    pair = prepare_pair(spec, direction, dtype, seed, after_transfer, built)
    x, cotangent = _inputs(pair.models, seed, dtype, probe)
    name_map = pair.models.layer_map(pair.src_fw, pair.dst_fw)
    ref, got, unfed = trace_pair(pair.src, pair.src_model, pair.dst, pair.dst_model, x, cotangent, train, name_map,
                                 single_step)
    ref64 = got64 = unfed64 = None
    if dtype != "float64":
        src64 = pair.src.to_dtype(_build(pair.models, pair.src_fw), "float64")
        dst64 = pair.dst.to_dtype(_build(pair.models, pair.dst_fw), "float64")
        pair.src.load_state(src64, _as64(pair.src_init))
        pair.dst.load_state(dst64, _as64(pair.dst_init))
        ref64, got64, unfed64 = trace_pair(pair.src, src64, pair.dst, dst64, x.astype(np.float64),
                                           lambda shape: cotangent(shape).astype(np.float64), train, name_map,
                                           single_step)
    judged = Judge(tol, ref64 is not None)
    rows = compare_traces(ref, got, name_map, tol, ref64, got64, single_step)
    report = DiffReport(pair.models.name, direction, mode, single_step, *rows[:5], forward=rows[5], backward=rows[6],
                        rounding=pair.models.conventions + _rewritten(ref, got, ref64, got64) + rows[7],
                        end_to_end=_end_to_end(judged, ref, unfed, ref64, unfed64))
    report.param_grads = param_grad_comparisons(pair, ref, got, ref64, got64, judged)
    report.as_built = _buffers_as_built(pair, built, tol)
    if train:
        report.buffers = _buffers(ref, _in_source_naming(pair, got.state_after),
                                  _in_source_naming(pair, got.state_before), pair.src_slots, pair.src_fw,
                                  pair.dst_fw, judged, ref64,
                                  _in_source_naming(pair, got64.state_after) if got64 is not None else None,
                                  _in_source_naming(pair, got64.state_before) if got64 is not None else None,
                                  shared_bn_rule(pair.models.spec), momenta_in_source_naming(pair))
        if not report.passed:
            report.rounding += few_values_per_channel(ref.bn_batches)
    return report


def _rewritten(*traces: LayerTrace | None) -> list[str]:
    """The calls a torch trace gave paddle's float32 values, and the dropout calls a trace held off, as notes
    (none when nothing was changed)."""
    rounded = sorted({r for trace in traces if trace is not None for r in trace.rounded})
    kept = [r.removeprefix(KEPT_CAST) for r in rounded if r.startswith(KEPT_CAST)]
    rounded = [r for r in rounded if not r.startswith(KEPT_CAST)]
    held = sorted({f"{key} (p={rate:g})" for trace in traces if trace is not None
                   for key, rate in trace.held_dropout.items()})
    return ([f"torch's calls given the float32 values paddle applies (`torch_impl.comparison_calls`): "
             f"{', '.join(rounded)}"] if rounded else []) + \
        ([f"the model's own casts of float64 tensors to float32 kept in float64: {', '.join(kept)}"] if kept else []) + \
        ([f"dropout calls (plain dropout masked by the shared stream, the rest held off as at inference): "
          f"{', '.join(held)}"] if held else [])


def transfer_by_name_map(ref_fw: str, ref_model, got_fw: str, got_model, name_map: Mapping[str, str]):
    """Copy the reference's weights into the candidate through the transfer rules and a layer-name map
    (reference layer names -> candidate layer names)."""
    from crossattn.frameworks import adapter
    from crossattn.model_pair import renamed_slots
    from weight_transfer import transfer

    ref_adapter, got_adapter = adapter(ref_fw), adapter(got_fw)
    inverse = {v: k for k, v in name_map.items()}
    as_reference, own_key = renamed_slots(got_adapter.slots(got_model), inverse)  # candidate slots, reference names
    state, report = transfer(ref_adapter.state(ref_model), ref_fw, as_reference, got_fw)
    got_adapter.load_state(got_model, {own_key[k]: v for k, v in state.items()})
    return report


def diff_user_pair(models: ModelPair, direction: str = "torch->paddle", mode: str = "eval",
                   single_step: bool = False, tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
                   probe: str = "normal") -> DiffReport:
    """Trace a user's pair with each model's weights as its factory made them (`--no-transfer`: weights the
    user loaded in each), or a checkpoint's (`--weights`) loaded into each side."""
    from crossattn.frameworks import adapter

    ref_fw, got_fw = direction.split("->")
    built = {}
    for framework in (ref_fw, got_fw):
        built[framework] = adapter(framework).to_dtype(models.build(framework), dtype)
    oriented = models.layer_map(ref_fw, got_fw)
    if models.weights is not None:  # a user's checkpoint (`start_weights`) instead of what the factories made
        from crossattn.start_weights import start_state

        for framework, model in built.items():
            fw = adapter(framework)
            fw.load_state(model, start_state(models, framework, fw.slots(model)))
    x, _ = probe_input(tuple(models.input_shape), seed, dtype, probe)
    report = diff_models((ref_fw, built[ref_fw]), (got_fw, built[got_fw]), x, oriented, mode, single_step, tol,
                         seed, title=models.name)
    report.rounding[:0] = models.conventions
    return report


def diff_pair(models: ModelPair, direction: str = "torch->paddle", mode: str = "eval", single_step: bool = False,
              tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
              do_transfer: bool = True, probe: str = "normal") -> DiffReport:
    """A pair traced from the weights `check` starts from: drawn in the reference (or a `--weights` checkpoint)
    and transferred, so a check's FAIL and the layer diff shows are of one run; `do_transfer` false (a user's
    pair only) traces each model as its factory made it."""
    if models.spec is not None:
        return diff_spec(models, direction, mode, single_step, tol, seed, dtype, probe=probe)
    if models.input_shape is None:
        raise CrossattnError("--input-shape is required with your own models, e.g. --input-shape 2,3,32,32")
    try:
        if do_transfer:
            return diff_spec(models, direction, mode, single_step, tol, seed, dtype, probe=probe)
        return diff_user_pair(models, direction, mode, single_step, tol, seed, dtype, probe)
    except CrossattnError:
        raise
    except (RuntimeError, ValueError) as exc:  # a shape the models cannot take, as the frameworks word it
        shape = ",".join(map(str, models.input_shape))
        raise CrossattnError(f"--input-shape {shape}: the models could not run on it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _state_in_reference_naming(ref_fw: str, ref_slots: dict, got_fw: str, got_model, got_state: dict,
                               name_map: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The candidate's non-trainable state under the reference's names and layouts, through the name map."""
    from crossattn.frameworks import adapter
    from crossattn.model_pair import renamed_slots
    from weight_transfer import transfer

    inverse = {v: k for k, v in name_map.items()}
    as_reference, own_key = renamed_slots(adapter(got_fw).slots(got_model), inverse)
    renamed = {ref_key: got_state[own_key[ref_key]] for ref_key in as_reference if own_key[ref_key] in got_state}
    mapped, _ = transfer(renamed, got_fw, widened(ref_slots), ref_fw, complete=False)
    return mapped


def _float64_copy(framework: str, model):
    from crossattn.frameworks import adapter

    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - the user's model may refuse copying in any way
        raise CrossattnError(f"a float32 diff traces a float64 copy of each model and the {framework} model "
                             f"cannot be copied ({type(exc).__name__}: {exc}); run the diff in float64") from None
    return adapter(framework).to_dtype(twin, "float64")


def diff_models(reference: tuple[str, object], candidate: tuple[str, object], x: np.ndarray,
                name_map: Mapping[str, str] | None = None, mode: str = "eval", single_step: bool = False,
                tol: Tolerance | None = None, seed: int = 0, title: str = "models") -> DiffReport:
    """Compare a user's own pair of models, given as (framework, model), weights already loaded.

    `name_map` maps reference layer names to candidate layer names; layers not
    in it are matched by identical name (see `transfer_by_name_map` to copy weights first).
    """
    from crossattn.frameworks import adapter

    (ref_fw, ref_model), (got_fw, got_model) = reference, candidate
    name_map = name_map or {}
    dtype = str(x.dtype)
    tol = tol or tolerance_for(dtype)
    train = mode == "train"

    def cotangent(shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, 2]).standard_normal(shape).astype(x.dtype)

    ref_adapter, got_adapter = adapter(ref_fw), adapter(got_fw)
    copies = None
    if dtype != "float64":  # copies taken before the step moves any running statistics
        copies = (_float64_copy(ref_fw, ref_model), _float64_copy(got_fw, got_model))
    ref, got, unfed = trace_pair(ref_adapter, ref_model, got_adapter, got_model, x, cotangent, train, name_map,
                                 single_step)
    ref64 = got64 = unfed64 = None
    if copies is not None:
        ref64, got64, unfed64 = trace_pair(ref_adapter, copies[0], got_adapter, copies[1], x.astype(np.float64),
                                           lambda shape: cotangent(shape).astype(np.float64), train, name_map,
                                           single_step)
    judged = Judge(tol, ref64 is not None)
    rows = compare_traces(ref, got, name_map, tol, ref64, got64, single_step)
    report = DiffReport(title, f"{ref_fw}->{got_fw}", mode, single_step, *rows[:5], forward=rows[5],
                        backward=rows[6], rounding=_rewritten(ref, got, ref64, got64) + rows[7],
                        end_to_end=_end_to_end(judged, ref, unfed, ref64, unfed64))
    if train:
        ref_slots = ref_adapter.slots(ref_model)

        def mapped(trace: LayerTrace | None, attr: str, model) -> dict | None:
            if trace is None:
                return None
            return _state_in_reference_naming(ref_fw, ref_slots, got_fw, model, getattr(trace, attr), name_map)

        inverse = {v: k for k, v in name_map.items()}
        momenta = ({map_layer_name(name, inverse): w for name, w in got_adapter.bn_momenta(got_model).items()},
                   ref_adapter.bn_momenta(ref_model))
        report.buffers = _buffers(ref, mapped(got, "state_after", got_model), mapped(got, "state_before", got_model),
                                  ref_slots, ref_fw, got_fw, judged, ref64,
                                  mapped(got64, "state_after", got_model), mapped(got64, "state_before", got_model),
                                  momenta=momenta)
        if not report.passed:
            report.rounding += few_values_per_channel(ref.bn_batches)
    return report
