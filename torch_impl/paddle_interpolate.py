"""torch's float64 `F.interpolate`, given the weights paddle resamples with.

paddle 3.3.1's CPU interpolation computes its source coordinates from a
float32 ratio (input over output size, 1/scale_factor, or (in-1)/(out-1) with
align_corners), and some of its weights in float32, even on float64 tensors;
its backward takes the weights by yet another float32 formula. torch works in
float64 throughout, so an equal pair resampling 10 -> 17 pixels differs by
about 5e-7 of scale, forward and backward, far over a float64 check's 1e-9.
Within a comparison, torch's float64 call resamples along each axis with the
weights paddle applies, read from paddle once per size (a comparison has both
frameworks), forward and backward each its own. That hides no difference:
paddle cannot resample any other way. Where paddle's rule differs from
torch's in exact arithmetic (a single output pixel without align_corners,
where paddle takes the first input and torch the centre; sizes equal but a
scale given; a recomputed scale factor; antialias, which paddle lacks),
torch's own call runs and the difference stays.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: mode -> the number of spatial axes its input has
MODES = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}
_SIGNATURE = inspect.signature(F.interpolate)


def _per_axis(value: Any, axes: int) -> tuple | None:
    if value is None:
        return None
    return tuple(value) if isinstance(value, Sequence) else (value,) * axes


@functools.lru_cache(maxsize=256)
def paddle_weights(mode: str, axis: int, in_size: int, out_size: int, align_corners: bool,
                   scale: float | None) -> tuple[np.ndarray, np.ndarray] | None:
    """paddle's (forward, backward) float64 weights along spatial `axis`, each (out_size, in_size); None
    where paddle is absent or resamples to another size.

    Read from paddle itself (one-hot inputs through its forward, one-hot
    output gradients through its backward, the other axes of size 1): its
    kernels compute the weights by different float32 formulas for the width
    than for the height (bilinear: up to 2.4e-7 apart), and its backward by
    another than its forward (up to 4e-7): neither is the other's adjoint.
    """
    try:
        import paddle
    except ImportError:
        return None
    axes = MODES[mode]
    layout = ("NCW", "NCHW", "NCDHW")[axes - 1]

    def shape(batch: int, size: int) -> tuple[int, ...]:
        return (batch, 1, *(size if a == axis else 1 for a in range(axes)))

    options: dict[str, Any] = dict(mode=mode, align_corners=align_corners, data_format=layout)
    if scale is None:
        options["size"] = [out_size if a == axis else 1 for a in range(axes)]
    else:
        options["scale_factor"] = [scale if a == axis else 1.0 for a in range(axes)]
    with paddle.no_grad():
        ones = paddle.to_tensor(np.eye(in_size).reshape(shape(in_size, in_size)))
        forward = paddle.nn.functional.interpolate(ones, **options).numpy().reshape(in_size, -1).T
    if forward.shape[0] != out_size:
        return None
    with paddle.enable_grad():
        x = paddle.to_tensor(np.ones(shape(out_size, in_size)), stop_gradient=False)
        y = paddle.nn.functional.interpolate(x, **options)
        y.backward(paddle.to_tensor(np.eye(out_size).reshape(shape(out_size, out_size))))
    backward = x.grad.numpy().reshape(out_size, in_size)
    forward, backward = np.ascontiguousarray(forward), np.ascontiguousarray(backward)
    forward.setflags(write=False)
    backward.setflags(write=False)
    return forward, backward


def _along(x: torch.Tensor, matrices: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    for axis, matrix in matrices:
        x = torch.movedim(torch.tensordot(x, matrix, dims=([axis], [1])), -1, axis)
    return x


class _PaddleResample(torch.autograd.Function):
    """Forward by paddle's forward weights, backward by its backward weights."""

    @staticmethod
    def forward(ctx, x, forwards, backwards):  # noqa: ANN001 - torch's Function signature
        ctx.backwards = backwards
        return _along(x, forwards).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001
        return _along(grad, [(axis, matrix.T) for axis, matrix in ctx.backwards]).contiguous(), None, None


def _plan(args: tuple, kwargs: dict) -> tuple[Any, list[tuple[int, int, float | None]], bool, str] | None:
    """(input, [(in, out, scale) per axis], align_corners, mode) where paddle's rule is torch's up to its
    float32 ratio; None where torch's own call should run."""
    try:
        bound = _SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    x, mode = bound.arguments["input"], bound.arguments["mode"]
    axes = MODES.get(mode)
    if (axes is None or not isinstance(x, torch.Tensor) or x.dtype != torch.float64 or x.dim() != axes + 2
            or bound.arguments["antialias"]):
        return None
    sizes, scales = _per_axis(bound.arguments["size"], axes), _per_axis(bound.arguments["scale_factor"], axes)
    if (sizes is None) == (scales is None) or len(sizes or scales) != axes:
        return None  # torch raises on its own call
    if scales is not None and bound.arguments["recompute_scale_factor"]:
        return None  # torch steps by in/out, paddle by 1/scale
    align = bool(bound.arguments["align_corners"])
    plan = []
    for axis, in_size in enumerate(x.shape[2:]):
        scale = None if scales is None else float(scales[axis])
        out_size = int(sizes[axis]) if sizes is not None else math.floor(in_size * scale)
        if out_size == 1 and in_size > 1 and not align:
            return None  # paddle takes the first input pixel, torch the centre
        plan.append((in_size, out_size, scale))
    if all(i == o for i, o, _ in plan) and any(s not in (None, 1.0) for _, _, s in plan):
        return None  # paddle copies the input, torch resamples by 1/scale
    return x, plan, align, mode


#: spatial axes -> torch's adaptive average pool, which area interpolation is in both frameworks
_AREA_POOLS = {1: torch.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _area_pool(args: tuple, kwargs: dict) -> tuple[Any, torch.Tensor, list[int]] | None:
    """(torch's adaptive pool, input, output size) for an area interpolation; None for any other call."""
    try:
        bound = _SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    x = bound.arguments["input"]
    if bound.arguments["mode"] != "area" or not isinstance(x, torch.Tensor) or x.dim() - 2 not in _AREA_POOLS:
        return None
    axes = x.dim() - 2
    sizes, scales = _per_axis(bound.arguments["size"], axes), _per_axis(bound.arguments["scale_factor"], axes)
    if (sizes is None) == (scales is None) or len(sizes or scales) != axes:
        return None  # torch raises on its own call
    out = [int(v) for v in sizes] if sizes is not None else \
        [math.floor(n * float(f)) for n, f in zip(x.shape[2:], scales)]
    return _AREA_POOLS[axes], x, out


def interpolate_as_paddle(args: tuple, kwargs: dict, rounded: set[str]) -> torch.Tensor:
    """`F.interpolate(*args, **kwargs)` with paddle's weights where only its float32 arithmetic differs from
    torch's rule; what was changed goes into `rounded`. Area interpolation is an adaptive average pool in
    both frameworks: it takes that pool's rewrite (`paddle_pool_grads`: paddle's backward)."""
    area = _area_pool(args, kwargs)
    if area is not None:
        from torch_impl.paddle_pool_grads import pool_as_paddle

        pool, x, size = area
        return pool_as_paddle(pool, (x, size if len(size) > 1 else size[0]), {}, rounded)
    plan = _plan(args, kwargs)
    if plan is None:
        return F.interpolate(*args, **kwargs)
    x, axes, align, mode = plan
    forwards, backwards = [], []
    for axis, (in_size, out_size, scale) in enumerate(axes):
        if in_size == out_size and scale in (None, 1.0):
            continue  # the same pixels in both
        weights = paddle_weights(mode, axis, in_size, out_size, align, scale)
        if weights is None:
            return F.interpolate(*args, **kwargs)
        forwards.append((2 + axis, torch.from_numpy(weights[0].copy())))
        backwards.append((2 + axis, torch.from_numpy(weights[1].copy())))
    if not forwards:
        return F.interpolate(*args, **kwargs)
    rounded.add(f"{mode} interpolation takes paddle's weights (float32 coordinates)")
    return _PaddleResample.apply(x, forwards, backwards)
