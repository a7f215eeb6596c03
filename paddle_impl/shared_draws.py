"""paddle's random functions, given the shared stream's values in a comparison step (`crossattn.dropout_calls`).

paddle has no function mode: within `shared_draws` the functions are replaced on `paddle` and on
`paddle.Tensor`, where a model's `paddle.rand(...)` or `x.bernoulli_(p)` looks them up at each call.
Each runs as written, for its shape and dtype, and its values are then replaced by the stream's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import paddle

from crossattn.dropout_calls import DropoutCalls, bernoulli


def _filled(out: paddle.Tensor, values: np.ndarray) -> paddle.Tensor:
    with paddle.no_grad():
        paddle.assign(paddle.to_tensor(values.astype(out.numpy().dtype)), output=out)
    return out


def _probability(value: Any) -> Any:
    return value.numpy().astype(np.float64) if isinstance(value, paddle.Tensor) else float(value)


def _rand(arguments: dict, out: paddle.Tensor, calls: DropoutCalls) -> np.ndarray:
    return calls.uniform("rand", out.shape)


def _uniform(arguments: dict, out: paddle.Tensor, calls: DropoutCalls) -> np.ndarray:
    low, high = float(arguments.get("min", 0.0)), float(arguments.get("max", 1.0))
    return low + (high - low) * calls.uniform("rand", out.shape)


def _randn(arguments: dict, out: paddle.Tensor, calls: DropoutCalls) -> np.ndarray:
    return calls.normal("randn", out.shape)


def _normal(arguments: dict, out: paddle.Tensor, calls: DropoutCalls) -> np.ndarray:
    mean, std = arguments.get("mean", 0.0), arguments.get("std", 1.0)
    return _probability(mean) + _probability(std) * calls.normal("randn", out.shape)


def _bernoulli(arguments: dict, out: paddle.Tensor, calls: DropoutCalls) -> np.ndarray:
    """paddle.bernoulli(x, p=None): probabilities from `x` unless p is given; `bernoulli_(x, p=0.5)`."""
    p = arguments.get("p")
    return bernoulli(calls.uniform("bernoulli", out.shape), _probability(arguments["x"] if p is None else p))


#: (owner, name) -> how the stream's values are made from the call's bound arguments and its result
_DRAWS: dict[tuple[str, str], Callable[[dict, paddle.Tensor, DropoutCalls], np.ndarray]] = {
    ("paddle", "rand"): _rand, ("paddle", "rand_like"): _rand, ("paddle", "uniform"): _uniform,
    ("paddle", "randn"): _randn, ("paddle", "randn_like"): _randn, ("paddle", "standard_normal"): _randn,
    ("paddle", "normal"): _normal, ("paddle", "bernoulli"): _bernoulli, ("paddle", "bernoulli_"): _bernoulli,
    ("Tensor", "uniform_"): _uniform, ("Tensor", "normal_"): _normal, ("Tensor", "bernoulli_"): _bernoulli,
}


#: the shared function running now, if any
_inside: list[Callable] = []


def _shared(original: Callable, values: Callable, calls: DropoutCalls) -> Callable:
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):  # a builtin without one: run it as written
        return original

    @functools.wraps(original)
    def shared(*args: Any, **kwargs: Any) -> Any:
        if _inside:  # one random function calling another (`Tensor.bernoulli_` calls `paddle.bernoulli_`): one draw
            return original(*args, **kwargs)
        _inside.append(original)
        try:
            out = original(*args, **kwargs)
        finally:
            _inside.pop()
        if not isinstance(out, paddle.Tensor) or not paddle.is_floating_point(out):
            return out
        bound = signature.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        if "self" in arguments:  # a Tensor method: its tensor is `x`
            arguments.setdefault("x", arguments.pop("self"))
        return _filled(out, values(arguments, out, calls))

    return shared


@contextlib.contextmanager
def shared_draws(calls: DropoutCalls) -> Iterator[DropoutCalls]:
    """Within: paddle's random functions give the shared stream's values, each draw recorded in `calls`."""
    owners = {"paddle": paddle, "Tensor": paddle.Tensor}
    originals = {(owner, name): getattr(owners[owner], name) for owner, name in _DRAWS
                 if hasattr(owners[owner], name)}
    for (owner, name), original in originals.items():
        setattr(owners[owner], name, _shared(original, _DRAWS[owner, name], calls))
    try:
        yield calls
    finally:
        for (owner, name), original in originals.items():
            setattr(owners[owner], name, original)
