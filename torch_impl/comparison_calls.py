"""The torch calls a comparison step rewrites, in one torch function mode (one Python call per op, not two).

Convolutions whose kernel choice is slow run in channels-last layout
(`conv_layout`); calls whose constants paddle holds in float32 take those
values (`paddle_constants`), float64 interpolation paddle's weights
(`paddle_interpolate`) and float64 average pools (a local response norm's
too) paddle's backward (`paddle_pool_grads`); a float64 step keeps the model's own casts to float32 in
float64 (`float64_casts`); dropout is masked alike or held, recorded (`functional_dropout`); random tensors take the values of a stream both
frameworks share (`shared_draws`). Everything else runs as the model wrote it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from crossattn.dropout_calls import DropoutCalls
from torch_impl.conv_layout import CONV2D, convolution
from torch_impl.float64_casts import CASTS, kept_cast
from torch_impl.functional_dropout import HELD_DROPOUT, dropout_call
from torch_impl.paddle_constants import HELD_CALLS, held_call
from torch_impl.paddle_interpolate import interpolate_as_paddle
from torch_impl.paddle_pool_grads import AVERAGE_POOLS, lrn_as_paddle, pool_as_paddle
from torch_impl.shared_draws import SHARED_DRAWS, shared_draw


class _ComparisonCalls(TorchFunctionMode):
    def __init__(self, rounded: set[str], dropouts: DropoutCalls, float64: bool = False) -> None:
        super().__init__()
        self.rounded, self.dropouts, self.float64 = rounded, dropouts, float64

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.float64 and func in CASTS:
            kept = kept_cast(func, args, kwargs, self.rounded)
            if kept is not None:
                return kept
        if func in CONV2D:
            return convolution(func, args, kwargs)
        if func in HELD_CALLS:
            return held_call(func, args, kwargs, self.rounded)
        if func is F.interpolate:
            return interpolate_as_paddle(args, kwargs, self.rounded)
        if func in AVERAGE_POOLS:
            return pool_as_paddle(func, args, kwargs, self.rounded)
        if func is F.local_response_norm:
            return lrn_as_paddle(args, kwargs, self.rounded)
        if func in HELD_DROPOUT:
            return dropout_call(func, args, kwargs, self.dropouts)
        if func in SHARED_DRAWS:
            return shared_draw(func, args, kwargs, self.dropouts)
        return func(*args, **kwargs)


@contextlib.contextmanager
def comparison_calls(rounded: set[str] | None = None, dropouts: DropoutCalls | None = None,
                     float64: bool = False) -> Iterator[set[str]]:
    """Within: the rewrites; `rounded` collects the constants given paddle's float32 values (and, in a `float64`
    step, the model's own casts to float32 kept in float64: `float64_casts`), `dropouts` the dropout calls."""
    rounded = set() if rounded is None else rounded
    with _ComparisonCalls(rounded, DropoutCalls() if dropouts is None else dropouts, float64):
        yield rounded
