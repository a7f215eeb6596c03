"""Layer-by-layer divergence: where two implementations first part ways.

Both models are traced through one step; every layer's output (forward) and
the gradient arriving at it (backward) are matched by name — identical for
twins, through a name map for a user's own pair — and compared in the
reference's execution order. The report marks the first layer whose output
exceeds the tolerance, and the first (in backward order) whose gradient does.

Single-step mode feeds every candidate layer the reference layer's inputs,
and every candidate output the reference's incoming gradient, so errors do
not accumulate: a small mismatch deep in a network is pinned to its layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from crossattn.check import _inputs, prepare_pair
from crossattn.compare import Comparison, compare
from crossattn.errors import CrossattnError
from crossattn.model_pair import ModelPair
from crossattn.spec import Spec
from crossattn.tolerances import Tolerance, tolerance_for
from crossattn.tracing import LayerTrace


@dataclasses.dataclass
class LayerRow:
    layer: str  # reference name (with #k for a repeated call)
    candidate: str  # the candidate's name for it
    output: Comparison
    grad: Comparison | None


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

    @property
    def passed(self) -> bool:
        return self.first_output is None and self.first_grad is None

    def to_json(self) -> dict:
        return {"title": self.title, "direction": self.direction, "mode": self.mode,
                "single_step": self.single_step, "first_output": self.first_output,
                "first_grad": self.first_grad, "unmatched_reference": self.unmatched_reference,
                "unmatched_candidate": self.unmatched_candidate,
                "layers": [{"layer": r.layer, "candidate": r.candidate, "output": r.output.to_json(),
                            "grad": r.grad.to_json() if r.grad else None} for r in self.rows]}


def map_call_key(key: str, name_map: Mapping[str, str]) -> str:
    """Map `layer#k` through a layer-name map by longest prefix, as the weight transfer does."""
    from weight_transfer.transfer import map_layer_name

    name, sep, call = key.partition("#")
    return map_layer_name(name, name_map) + sep + call


def compare_traces(ref: LayerTrace, got: LayerTrace, name_map: Mapping[str, str], tol: Tolerance) -> tuple:
    rows = []
    matched = set()
    for key in ref.order:
        other = map_call_key(key, name_map)
        if other not in got.outputs:
            continue
        matched.add(other)
        output = compare(key, "layer_output", got.outputs[other], ref.outputs[key], tol)
        grad = None
        if key in ref.grads and other in got.grads:
            grad = compare(key, "layer_grad", got.grads[other], ref.grads[key], tol)
        elif key in ref.grads:  # the candidate cut the gradient flow here (a detach, a no-grad path)
            grad = Comparison(key, "layer_grad", math.inf, math.inf, math.nan, False,
                              "no gradient reached this layer in the candidate", tol.atol, tol.rtol)
        rows.append(LayerRow(key, other, output, grad))
    first_output = next((r.layer for r in rows if not r.output.passed), None)
    first_grad = next((r.layer for r in reversed(rows) if r.grad is not None and not r.grad.passed), None)
    unmatched_ref = [k for k in ref.order if map_call_key(k, name_map) not in got.outputs]
    unmatched_got = [k for k in got.order if k not in matched]
    return rows, first_output, first_grad, unmatched_ref, unmatched_got


def trace_pair(ref_adapter, ref_model, got_adapter, got_model, x: np.ndarray, cotangent, train: bool,
               name_map: Mapping[str, str], single_step: bool) -> tuple[LayerTrace, LayerTrace]:
    ref = ref_adapter.trace(ref_model, x, cotangent, train)
    feed = feed_grads = None
    if single_step:
        feed = {map_call_key(k, name_map): v for k, v in ref.inputs.items()}
        feed_grads = {map_call_key(k, name_map): v for k, v in ref.grads.items()}
    got = got_adapter.trace(got_model, x, cotangent, train, feed=feed, feed_grads=feed_grads)
    return ref, got


def diff_spec(spec: Spec | ModelPair, direction: str = "torch->paddle", mode: str = "eval", single_step: bool = False,
              tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
              after_transfer=None) -> DiffReport:
    """Trace a pair (weights drawn in the source and transferred) and compare layer by layer."""
    tol = tol or tolerance_for(dtype)
    pair = prepare_pair(spec, direction, dtype, seed, after_transfer)
    x, cotangent = _inputs(pair.models, seed, dtype)
    name_map = pair.models.layer_map(pair.src_fw, pair.dst_fw)
    ref, got = trace_pair(pair.src, pair.src_model, pair.dst, pair.dst_model, x, cotangent, mode == "train",
                          name_map, single_step)
    return DiffReport(pair.models.name, direction, mode, single_step, *compare_traces(ref, got, name_map, tol))


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
                   do_transfer: bool = True) -> DiffReport:
    """Trace a user's pair with its own weights: the reference's copied into the candidate (do_transfer), or
    each model as its factory made it (weights the user loaded)."""
    from crossattn.frameworks import adapter

    if models.input_shape is None:
        raise CrossattnError("--input-shape is required with your own models, e.g. --input-shape 2,3,32,32")
    ref_fw, got_fw = direction.split("->")
    built = {}
    for framework in (ref_fw, got_fw):
        built[framework] = adapter(framework).to_dtype(models.build(framework), dtype)
    oriented = models.layer_map(ref_fw, got_fw)
    if do_transfer:
        transfer_by_name_map(ref_fw, built[ref_fw], got_fw, built[got_fw], oriented)
    x = np.random.default_rng([seed, 1]).standard_normal(models.input_shape).astype(dtype)
    try:
        return diff_models((ref_fw, built[ref_fw]), (got_fw, built[got_fw]), x, oriented, mode, single_step, tol,
                           seed, title=models.name)
    except CrossattnError:
        raise
    except (RuntimeError, ValueError) as exc:  # a shape the models cannot take, as the frameworks word it
        shape = ",".join(map(str, models.input_shape))
        raise CrossattnError(f"--input-shape {shape}: the models could not run on it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def diff_pair(models: ModelPair, direction: str = "torch->paddle", mode: str = "eval", single_step: bool = False,
              tol: Tolerance | None = None, seed: int = 0, dtype: str = "float64",
              do_transfer: bool = True) -> DiffReport:
    """A spec's twins (random weights drawn and transferred) or a user's pair (its own weights)."""
    if models.spec is not None:
        return diff_spec(models, direction, mode, single_step, tol, seed, dtype)
    return diff_user_pair(models, direction, mode, single_step, tol, seed, dtype, do_transfer)


def diff_models(reference: tuple[str, object], candidate: tuple[str, object], x: np.ndarray,
                name_map: Mapping[str, str] | None = None, mode: str = "eval", single_step: bool = False,
                tol: Tolerance | None = None, seed: int = 0, title: str = "models") -> DiffReport:
    """Compare a user's own pair of models, given as (framework, model), weights already loaded.

    `name_map` maps reference layer names to candidate layer names; layers not
    in it are matched by identical name (see `transfer_by_name_map` to copy weights first).
    """
    from crossattn.frameworks import adapter

    (ref_fw, ref_model), (got_fw, got_model) = reference, candidate
    tol = tol or tolerance_for(str(x.dtype))

    def cotangent(shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, 2]).standard_normal(shape).astype(x.dtype)

    ref, got = trace_pair(adapter(ref_fw), ref_model, adapter(got_fw), got_model, x, cotangent, mode == "train",
                          name_map or {}, single_step)
    return DiffReport(title, f"{ref_fw}->{got_fw}", mode, single_step,
                      *compare_traces(ref, got, name_map or {}, tol))
