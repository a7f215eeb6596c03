"""torch calls whose constants paddle applies in float32, given those float32 values in a comparison.

paddle keeps the scalar attributes of some ops as float32 even on float64
tensors (measured, paddle 3.3.1): ELU's and CELU's alpha, Hardtanh's bounds,
Softshrink's lambda, the exponent of pow, hardsigmoid's slope, SELU's scale
and alpha. An equal pair then differs by up to 4e-8 of scale, over a float64
check's 1e-9 and the float32 rule's 1e-8 on the float64 results. Within a
comparison step (`comparison_calls`), torch gets the float32 value of each such
constant, so both frameworks apply the same one. That hides no difference:
paddle cannot apply a value between two float32 numbers.

SELU needs its whole kernel: paddle's backward is not its forward's derivative.
For x <= 0 it multiplies the incoming gradient by out + float32(scale x alpha),
the product rounded to float32 (2.9e-8 from the derivative of its own forward,
measured), so torch is given paddle's forward and that backward (`_PaddleSelu`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: function -> (position, keyword) of each float argument paddle holds in float32 (norm epsilons too, for a
#: norm called as a function; a norm layer's own is set when crossattn builds the model: `layers.py`)
_HELD = {
    F.elu: ((1, "alpha"),), F.celu: ((1, "alpha"),), F.softshrink: ((1, "lambd"),),
    F.batch_norm: ((7, "eps"),), F.instance_norm: ((7, "eps"),), F.layer_norm: ((4, "eps"),),
    F.hardtanh: ((1, "min_val"), (2, "max_val")),
    torch.pow: ((1, "exponent"),), torch.Tensor.pow: ((1, "exponent"),), torch.Tensor.pow_: ((1, "exponent"),),
    torch.Tensor.__pow__: ((1, "exponent"),), torch.Tensor.__ipow__: ((1, "exponent"),),
}
SIXTH = float(np.float32(1.0 / 6.0))
#: SELU's constants as paddle holds them (C++ floats), and the product its backward rounds to float32
SELU_SCALE = float(np.float32(1.0507009873554804934193349852946))
SELU_ALPHA = float(np.float32(1.6732632423543772848170429916717))
SELU_SCALE_ALPHA = float(np.float32(SELU_SCALE * SELU_ALPHA))
SELU_CALLS = frozenset({F.selu, torch.selu, torch.selu_})


class _PaddleSelu(torch.autograd.Function):
    """paddle's SELU kernel: scale * (alpha * exp(x) - alpha) for x <= 0, and a backward that reads the output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = torch.where(x > 0, x * SELU_SCALE, (torch.exp(x) * SELU_ALPHA - SELU_ALPHA) * SELU_SCALE)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad * torch.where(out > 0, torch.full_like(out, SELU_SCALE), out + SELU_SCALE_ALPHA)


def _selu_as_paddle(func: Any, args: tuple, kwargs: dict, rounded: set[str]) -> Any:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return func(*args, **kwargs)
    rounded.add("selu: paddle's float32 scale and alpha, and its backward (output + float32(scale x alpha))")
    out = _PaddleSelu.apply(x)
    inplace = func is torch.selu_ or (args[1] if len(args) > 1 else kwargs.get("inplace", False))
    return x.copy_(out) if inplace else out


def _held(value: object) -> object:
    return float(np.float32(value)) if type(value) is float else value


def _name(func: object) -> str:
    return getattr(func, "__name__", str(func)).strip("_")


def held_call(func: Any, args: tuple, kwargs: dict, rounded: set[str]) -> Any:
    """A call of `HELD_CALLS` with paddle's float32 constants; what was changed goes into `rounded`. Called from
    inside a torch function mode's handler (the mode is off the stack there)."""
    if func in SELU_CALLS:
        return _selu_as_paddle(func, args, kwargs, rounded)
    if func is F.hardsigmoid:
        if args and isinstance(args[0], torch.Tensor):
            rounded.add(f"hardsigmoid slope 1/6 -> {SIXTH:.9g}")
            return torch.clamp(args[0] * SIXTH + 0.5, 0.0, 1.0)
        return func(*args, **kwargs)
    args, kwargs = list(args), dict(kwargs)
    for index, keyword in _HELD[func]:
        where, key = (args, index) if len(args) > index else (kwargs, keyword)
        if isinstance(where, list) or key in where:
            value = where[key]
            if _held(value) != value:
                where[key] = _held(value)
                rounded.add(f"{_name(func)} {keyword} {value:g} -> {_held(value):.9g}")
    return func(*args, **kwargs)


#: the calls `held_call` rewrites
HELD_CALLS = frozenset(_HELD) | {F.hardsigmoid} | SELU_CALLS
