"""torch's float64 average pooling, given the backward paddle computes.

paddle 3.3.1's average and adaptive average pools compute their forward
exactly on float64 tensors, but their backward multiplies each window's
gradient by 1/N held in float32 (measured: 2e-8 of scale where windows have
different sizes, as at the border of a 3x3 pool without padding counted, or
adaptive bins of 10 -> 7). Where all windows are alike that is one uniform
factor, which `compare` already recognises; where they differ no rule can tell
it from a port bug. Within a comparison, torch's float64 pool keeps its own
forward and takes paddle's backward for the same arguments (paddle's kernel
run on the gradient: a comparison has both frameworks). That hides no
difference: paddle cannot compute another gradient, and any difference in
the windows themselves shows in the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: torch's call -> (paddle function name, spatial axes, torch's argument names in order)
_POOLS: dict[Any, tuple[str, int, tuple[str, ...]]] = {
    torch.avg_pool1d: ("avg_pool1d", 1, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                                          "count_include_pad")),
    torch._C._nn.avg_pool2d: ("avg_pool2d", 2, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                                                 "count_include_pad", "divisor_override")),
    torch._C._nn.avg_pool3d: ("avg_pool3d", 3, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                                                 "count_include_pad", "divisor_override")),
    torch.adaptive_avg_pool1d: ("adaptive_avg_pool1d", 1, ("input", "output_size")),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", 2, ("input", "output_size")),
    F.adaptive_avg_pool3d: ("adaptive_avg_pool3d", 3, ("input", "output_size")),
}
AVERAGE_POOLS = frozenset(_POOLS)
_DEFAULTS = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}


def _arguments(func: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    names = _POOLS[func][2]
    if len(args) > len(names) or any(k not in names for k in kwargs):
        return None
    bound = {**{n: _DEFAULTS[n] for n in names if n in _DEFAULTS}, **dict(zip(names, args)), **kwargs}
    return bound if "input" in bound and all(n in bound for n in names) else None


def _paddle_call(func: Any, bound: dict[str, Any]) -> Callable[[Any], Any]:
    import paddle.nn.functional as P

    name = _POOLS[func][0]
    paddle_pool = getattr(P, name)
    if name.startswith("adaptive"):
        size = bound["output_size"]
        size = list(size) if isinstance(size, (tuple, list)) else size
        return lambda x: paddle_pool(x, size)
    options = dict(kernel_size=bound["kernel_size"], stride=bound["stride"] or None, padding=bound["padding"],
                   ceil_mode=bool(bound["ceil_mode"]), exclusive=not bound["count_include_pad"])
    if "divisor_override" in bound and bound["divisor_override"] is not None:
        options["divisor_override"] = bound["divisor_override"]
    return lambda x: paddle_pool(x, **options)


class _PaddleBackward(torch.autograd.Function):
    """torch's forward; the backward of paddle's kernel for the same arguments (torch's own where paddle's
    output shape differs)."""

    @staticmethod
    def forward(ctx, x, torch_call, paddle_call):  # noqa: ANN001 - torch's Function signature
        ctx.torch_call, ctx.paddle_call = torch_call, paddle_call
        ctx.save_for_backward(x)
        return torch_call(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001
        import paddle

        (x,) = ctx.saved_tensors
        with paddle.enable_grad():
            inputs = paddle.to_tensor(np.zeros(tuple(x.shape)), stop_gradient=False)  # a linear map: any values
            output = ctx.paddle_call(inputs)
            if tuple(output.shape) == tuple(grad.shape):
                output.backward(paddle.to_tensor(np.ascontiguousarray(grad.numpy())))
                return torch.from_numpy(inputs.grad.numpy()), None, None
        with torch.enable_grad():
            again = x.detach().requires_grad_(True)
            return torch.autograd.grad(ctx.torch_call(again), again, grad)[0], None, None


def pool_as_paddle(func: Any, args: tuple, kwargs: dict, rounded: set[str]) -> torch.Tensor:
    """An average pool of `AVERAGE_POOLS` whose float64 backward is paddle's; what was changed goes into
    `rounded`. Any other call (float32, no gradient wanted, arguments paddle does not take) runs as written."""
    bound = _arguments(func, args, kwargs)
    x = None if bound is None else bound["input"]
    if (not isinstance(x, torch.Tensor) or x.dtype != torch.float64 or not x.requires_grad
            or x.dim() != _POOLS[func][1] + 2 or not torch.is_grad_enabled()):
        return func(*args, **kwargs)
    try:
        paddle_call = _paddle_call(func, bound)
    except ImportError:
        return func(*args, **kwargs)
    rest = {k: v for k, v in bound.items() if k != "input"}
    rounded.add(f"{_POOLS[func][0]} backward is paddle's (1/N held in float32)")
    return _PaddleBackward.apply(x, lambda t: func(t, **rest), paddle_call)


def lrn_as_paddle(args: tuple, kwargs: dict, rounded: set[str]) -> torch.Tensor:
    """`F.local_response_norm`, built of the same ops as torch's, with its average pool given paddle's backward
    and its exponent paddle's float32 value (paddle builds its LRN of the same ops: a float64 pair otherwise
    differs by 6e-9 of scale in the input gradient, measured on inputs of norm 50)."""
    names = ("input", "size", "alpha", "beta", "k")
    bound = {"alpha": 1e-4, "beta": 0.75, "k": 1.0, **dict(zip(names, args)), **kwargs}
    x = bound.get("input")
    if (len(args) > len(names) or any(k not in names for k in kwargs) or not isinstance(x, torch.Tensor)
            or x.dtype != torch.float64 or x.dim() < 3 or x.numel() == 0 or not x.requires_grad
            or not torch.is_grad_enabled()):
        return F.local_response_norm(*args, **kwargs)
    size, alpha, k = bound["size"], bound["alpha"], bound["k"]
    beta = float(np.float32(bound["beta"])) if type(bound["beta"]) is float else bound["beta"]
    squares = x * x
    if x.dim() == 3:
        padded = F.pad(squares.unsqueeze(1), (0, 0, size // 2, (size - 1) // 2))
        mean = pool_as_paddle(torch._C._nn.avg_pool2d, (padded, (size, 1)), {"stride": 1}, rounded).squeeze(1)
    else:
        shape = x.shape
        padded = F.pad(squares.view(shape[0], 1, shape[1], shape[2], -1), (0, 0, 0, 0, size // 2, (size - 1) // 2))
        mean = pool_as_paddle(torch._C._nn.avg_pool3d, (padded, (size, 1, 1)), {"stride": 1}, rounded)
        mean = mean.squeeze(1).view(shape)
    return x / (mean * alpha + k).pow(beta)
