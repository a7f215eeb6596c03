"""paddle's dropout functions in a comparison step, each call recorded (`crossattn.dropout_calls`).

Plain (elementwise) dropout is applied with the mask of the stream both
frameworks share, as torch's twin is (`torch_impl.functional_dropout`); the
other kinds run as at inference.

paddle has no function mode, so within `held_dropout_calls` the functions are
replaced on `paddle.nn.functional`, where a model's `F.dropout(...)` looks
them up at each call (a name imported with `from paddle.nn.functional import
dropout` before the step keeps the original). A call with dropout off
(`training=False`, or an attention's rate of 0) runs as written and is not
recorded. A call held off runs with `training=False`: paddle's
`mode="downscale_in_infer"` then scales by 1 - p, as it does at inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import paddle
import paddle.nn.functional as F

from crossattn.dropout_calls import DropoutCalls, bernoulli
from paddle_impl.shared_draws import shared_draws


@dataclasses.dataclass(frozen=True)
class _Call:
    kind: str  # the name both frameworks' records share (torch's function names)
    rate: str  # the rate's parameter
    training: str  # the parameter turning dropout on
    #: paddle's sdpa drops only when both `training` and a rate above 0 are given
    needs_rate: bool = False


HELD_DROPOUT: dict[str, _Call] = {
    "dropout": _Call("dropout", "p", "training"),
    "dropout1d": _Call("dropout1d", "p", "training"),
    "dropout2d": _Call("dropout2d", "p", "training"),
    "dropout3d": _Call("dropout3d", "p", "training"),
    "alpha_dropout": _Call("alpha_dropout", "p", "training"),
    "feature_alpha_dropout": _Call("feature_alpha_dropout", "p", "training"),
    "scaled_dot_product_attention": _Call("attention dropout", "dropout_p", "training", needs_rate=True),
}


def _kind(call: _Call, arguments: dict[str, Any]) -> str:
    """torch's name for what a paddle call does: `F.dropout` over axes (0, 1) of a 3-, 4- or 5-D input is
    torch's channel dropout; another axis or paddle's inference-scaling mode has no torch name."""
    if call.kind != "dropout":
        return call.kind
    kind = call.kind
    axis = arguments.get("axis")
    if axis is not None:
        axes = sorted([axis] if isinstance(axis, int) else list(axis))
        ndim = len(arguments["x"].shape)
        kind = {3: "dropout1d", 4: "dropout2d", 5: "dropout3d"}.get(ndim, kind) if axes == [0, 1] else \
            f"dropout(axis={axes})"
    mode = arguments.get("mode", "upscale_in_train")
    return kind if mode == "upscale_in_train" else f"{kind}(mode={mode})"


#: the kinds applied with the shared stream's mask: elementwise dropout in either of paddle's scaling modes
MASKED = ("dropout", "dropout(mode=downscale_in_infer)")


def masked_dropout(x: paddle.Tensor, rate: float, calls: DropoutCalls, upscale: bool) -> paddle.Tensor:
    """x times the shared stream's keep mask (the array torch's twin takes), over 1 - p in paddle's
    upscale_in_train mode (all zeros at p = 1), unscaled in downscale_in_infer's train mode."""
    keep = 1.0 - rate
    mask = bernoulli(calls.uniform("dropout", tuple(x.shape)), keep)
    scale = (mask / keep if keep > 0 else mask * 0.0) if upscale else mask
    return x * paddle.to_tensor(scale).astype(x.dtype)


def _held(original: Callable, call: _Call, calls: DropoutCalls) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def held(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        rate = float(arguments[call.rate])
        if not arguments[call.training] or (call.needs_rate and rate <= 0):
            return original(*args, **kwargs)
        kind = _kind(call, arguments)
        calls.record(kind, rate)
        if kind in MASKED:
            return masked_dropout(arguments["x"], rate, calls, kind == "dropout")
        arguments[call.training] = False
        return original(*bound.args, **bound.kwargs)

    return held


@contextlib.contextmanager
def held_dropout_calls(calls: DropoutCalls) -> Iterator[DropoutCalls]:
    """Within: `paddle.nn.functional`'s dropout functions hold dropout off, recording each call in `calls`; random
    tensors take the values of the stream both frameworks share (`paddle_impl.shared_draws`)."""
    originals = {name: getattr(F, name) for name in HELD_DROPOUT if hasattr(F, name)}
    for name, original in originals.items():
        setattr(F, name, _held(original, HELD_DROPOUT[name], calls))
    try:
        with shared_draws(calls):
            yield calls
    finally:
        for name, original in originals.items():
            setattr(F, name, original)
