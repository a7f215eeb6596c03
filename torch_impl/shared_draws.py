"""torch's random functions, given the shared stream's values in a comparison step (`crossattn.dropout_calls`).

Applied by `comparison_calls`' torch function mode: `torch.rand`, `torch.randn` (and their `_like` forms),
`torch.bernoulli`, and the in-place `Tensor.uniform_`, `normal_` and `bernoulli_` that a DropPath
(`x.new_empty(shape).bernoulli_(keep)`) or a noise layer calls. Each runs as written, for its shape, dtype
and device, and its values are then replaced by the stream's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from crossattn.dropout_calls import DropoutCalls, bernoulli


def _argument(args: tuple, kwargs: dict, position: int, keyword: str, default: Any) -> Any:
    if keyword in kwargs:
        return kwargs[keyword]
    return args[position] if len(args) > position else default


def _filled(out: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        out.copy_(torch.from_numpy(values).to(out.dtype))
    return out


def _probability(value: Any) -> Any:
    return value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else float(value)


def _rand(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    out = func(*args, **kwargs)
    return _filled(out, calls.uniform("rand", out.shape))


def _randn(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    out = func(*args, **kwargs)
    return _filled(out, calls.normal("randn", out.shape))


def _bernoulli(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    """torch.bernoulli(input, p=None) / Tensor.bernoulli(p): probabilities from `input` unless p is given."""
    out = func(*args, **kwargs)
    p = _argument(args, kwargs, 1, "p", None)
    probability = _probability(args[0] if p is None else p)
    return _filled(out, bernoulli(calls.uniform("bernoulli", out.shape), probability))


def _bernoulli_(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    out = func(*args, **kwargs)
    probability = _probability(_argument(args, kwargs, 1, "p", 0.5))
    return _filled(out, bernoulli(calls.uniform("bernoulli", out.shape), probability))


def _uniform_(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    out = func(*args, **kwargs)
    low, high = float(_argument(args, kwargs, 1, "from", 0.0)), float(_argument(args, kwargs, 2, "to", 1.0))
    return _filled(out, low + (high - low) * calls.uniform("rand", out.shape))


def _normal_(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    out = func(*args, **kwargs)
    mean, std = float(_argument(args, kwargs, 1, "mean", 0.0)), float(_argument(args, kwargs, 2, "std", 1.0))
    return _filled(out, mean + std * calls.normal("randn", out.shape))


SHARED_DRAWS: dict[Callable, Callable] = {
    torch.rand: _rand, torch.rand_like: _rand, torch.randn: _randn, torch.randn_like: _randn,
    torch.bernoulli: _bernoulli, torch.Tensor.bernoulli: _bernoulli, torch.Tensor.bernoulli_: _bernoulli_,
    torch.Tensor.uniform_: _uniform_, torch.Tensor.normal_: _normal_,
}


def shared_draw(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> torch.Tensor:
    """`func`'s tensor with the shared stream's values (a call with a generator of its own, too)."""
    return SHARED_DRAWS[func](func, args, kwargs, calls)
