"""torch's float64 CPU convolutions, run in channels-last layout where that layout is faster.

torch has no oneDNN kernel for float64: its CPU convolution unfolds each
sample and multiplies the weight matrix by a matrix as wide as the sample's
output positions. At a handful of positions (the last stages of a ResNet on
a small input: 2x2 to 5x5) that product is skinny and BLAS runs it at a
third of its speed; in channels-last layout torch multiplies one matrix
per batch with the positions of every sample as rows instead. Measured on a
2-core AMD EPYC (docs/benchmarks.md): a 3x3 conv of 256 channels on 3x3
positions takes 0.57x the time, 1x1 convs of 1024 channels 0.42x, SE-ResNet-152's
float64 step 0.55x; at 36 positions and more, or with few input channels,
the layout is no faster or slower, so those convolutions are left as they are.

The layer sees and returns tensors in the usual contiguous layout (the
conversion is inside the call, and differentiable), so a model's reshapes and
views behave as always; values differ from the contiguous kernel only by the
order of float64 sums (about 1e-16 of scale). paddle's float64 convolution
has no such gap, so its twin has no counterpart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: channels-last only at or below this many input positions per sample (measured: 25 gains, 36 does not)
MAX_POSITIONS = 25
#: ... and at or above this many products per output value (in channels / groups x kernel positions)
MIN_REDUCTION = 256

_CONV2D = {F.conv2d, torch.conv2d}


def _faster_channels_last(x: Any, weight: Any, groups: int) -> bool:
    if type(x) is not torch.Tensor or not isinstance(weight, torch.Tensor) or type(weight) not in (
            torch.Tensor, torch.nn.Parameter):
        return False
    if x.dtype != torch.float64 or x.device.type != "cpu" or x.dim() != 4 or weight.dim() != 4 or groups != 1:
        return False
    return x.shape[2] * x.shape[3] <= MAX_POSITIONS and weight.shape[1] * weight.shape[2] * weight.shape[3] >= \
        MIN_REDUCTION


class _ChannelsLastConv(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV2D and len(args) >= 2:
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            x, weight = args[0], args[1]
            if isinstance(groups, int) and _faster_channels_last(x, weight, groups):
                # inside its own handler the mode is off the stack: these calls are not intercepted again
                channels_last = torch.channels_last
                out = func(x.contiguous(memory_format=channels_last), weight.contiguous(memory_format=channels_last),
                           *args[2:], **kwargs)
                return out.contiguous()
        return func(*args, **kwargs)


@contextlib.contextmanager
def channels_last_convs() -> Iterator[None]:
    """Within: float64 CPU conv2d calls that are faster in channels-last layout run in it."""
    with _ChannelsLastConv():
        yield
