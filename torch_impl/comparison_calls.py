"""The torch calls a comparison step rewrites, in one torch function mode (one Python call per op, not two).

Convolutions whose kernel choice is slow run in channels-last layout
(`conv_layout`); calls whose constants paddle holds in float32 take those
values (`paddle_constants`), float64 interpolation paddle's weights
(`paddle_interpolate`) and float64 average pools paddle's backward
(`paddle_pool_grads`). Everything else runs as the model wrote it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from torch_impl.conv_layout import CONV2D, convolution
from torch_impl.paddle_constants import HELD_CALLS, held_call
from torch_impl.paddle_interpolate import interpolate_as_paddle
from torch_impl.paddle_pool_grads import AVERAGE_POOLS, pool_as_paddle


class _ComparisonCalls(TorchFunctionMode):
    def __init__(self, rounded: set[str]) -> None:
        super().__init__()
        self.rounded = rounded

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONV2D:
            return convolution(func, args, kwargs)
        if func in HELD_CALLS:
            return held_call(func, args, kwargs, self.rounded)
        if func is F.interpolate:
            return interpolate_as_paddle(args, kwargs, self.rounded)
        if func in AVERAGE_POOLS:
            return pool_as_paddle(func, args, kwargs, self.rounded)
        return func(*args, **kwargs)


@contextlib.contextmanager
def comparison_calls(rounded: set[str] | None = None) -> Iterator[set[str]]:
    """Within: both rewrites; `rounded` collects the constants given paddle's float32 values."""
    rounded = set() if rounded is None else rounded
    with _ComparisonCalls(rounded):
        yield rounded
