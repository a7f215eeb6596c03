"""torch's CPU convolutions, run in channels-last layout where torch's own choice of kernel is slow.

Two cases, each measured per shape on a 2-core AMD EPYC (docs/benchmarks.md):

- **float64.** torch has no oneDNN kernel for float64: its convolution
  unfolds each sample and multiplies the weight matrix by a matrix as wide as
  the sample's output positions. At a handful of positions (the last stages
  of a ResNet on a small input: 2x2 to 5x5) that product is skinny and BLAS
  runs it at a third of its speed; in channels-last layout torch multiplies
  one matrix per batch with the positions of every sample as rows instead.
  A 3x3 conv of 256 channels on 3x3 positions takes 0.57x the time, 1x1 convs
  of 1024 channels 0.42x; at 36 positions and more, or with few input
  channels, the layout is no faster or slower.
- **float32, one thread.** torch runs float32 convolutions in oneDNN, except
  a 1x1 convolution of stride 1 on a batch under 16 when it has one thread
  (as each of check's worker processes has): that call takes the same
  unfolded per-sample product. At 2x2 and 3x3 positions with 128 input
  channels or more, channels-last takes 0.22-0.80x its time (1024 channels:
  0.26x); up to 6x6 positions it gains only on large layers (512x512 and
  up: 0.68-0.91x). With two threads torch picks oneDNN itself, and
  converting is slower (1.1-1.5x), so nothing is converted there.

The layer sees and returns tensors in the usual contiguous layout (the
conversion is inside the call, and differentiable), so a model's reshapes and
views behave as always; values differ from the contiguous kernel only by the
order of sums (about 1e-16 of scale in float64, float32 rounding in float32,
which check judges against each side's own float64 result). paddle's
convolutions show no such gap, so its twin has no counterpart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: float64: channels-last only at or below this many input positions per sample (measured: 25 gains, 36 does not)
MAX_POSITIONS = 25
#: ... and at or above this many products per output value (in channels / groups x kernel positions)
MIN_REDUCTION = 256
#: float32 (unfolded 1x1 calls): at or below this many positions, from this many input channels ...
FLOAT32_FEW_POSITIONS, FLOAT32_MIN_CHANNELS = 9, 128
#: ... and at or below this many positions for layers of at least this many weights (in x out channels)
FLOAT32_MAX_POSITIONS, FLOAT32_MIN_WEIGHTS = 36, 512 * 512
#: torch gives a 1x1 convolution of stride 1 its unfolded kernel below this batch (on one thread)
UNFOLDED_BELOW_BATCH = 16

CONV2D = {F.conv2d, torch.conv2d}


def _is_one(value: Any) -> bool:
    return all(v == 1 for v in value) if isinstance(value, (tuple, list)) else value == 1


def _unfolded_float32(x: torch.Tensor, weight: torch.Tensor, stride: Any, dilation: Any) -> bool:
    """Whether torch runs this float32 call in its unfolded per-sample kernel rather than oneDNN's."""
    return weight.shape[2] == 1 and weight.shape[3] == 1 and _is_one(stride) and _is_one(dilation) and \
        x.shape[0] < UNFOLDED_BELOW_BATCH and torch.get_num_threads() == 1


def _faster_channels_last(x: Any, weight: Any, groups: int, stride: Any = 1, dilation: Any = 1) -> bool:
    if type(x) is not torch.Tensor or not isinstance(weight, torch.Tensor) or type(weight) not in (
            torch.Tensor, torch.nn.Parameter):
        return False
    if x.device.type != "cpu" or x.dim() != 4 or weight.dim() != 4 or groups != 1 or weight.dtype != x.dtype:
        return False
    positions = x.shape[2] * x.shape[3]
    if x.dtype == torch.float64:
        return positions <= MAX_POSITIONS and weight.shape[1] * weight.shape[2] * weight.shape[3] >= MIN_REDUCTION
    if x.dtype == torch.float32 and 1 < positions and _unfolded_float32(x, weight, stride, dilation):
        in_channels, out_channels = weight.shape[1], weight.shape[0]
        return (positions <= FLOAT32_FEW_POSITIONS and in_channels >= FLOAT32_MIN_CHANNELS) or \
            (positions <= FLOAT32_MAX_POSITIONS and in_channels * out_channels >= FLOAT32_MIN_WEIGHTS)
    return False


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def convolution(func: Any, args: tuple, kwargs: dict) -> Any:
    """A conv2d call (`CONV2D`), in channels-last layout where that is faster; called from inside a torch
    function mode's handler, where the mode is off the stack and these calls are not intercepted again."""
    if len(args) >= 2:
        groups = _argument(args, kwargs, 6, "groups", 1)
        x, weight = args[0], args[1]
        if isinstance(groups, int) and _faster_channels_last(
                x, weight, groups, _argument(args, kwargs, 3, "stride", 1), _argument(args, kwargs, 5, "dilation", 1)):
            channels_last = torch.channels_last
            out = func(x.contiguous(memory_format=channels_last), weight.contiguous(memory_format=channels_last),
                       *args[2:], **kwargs)
            return out.contiguous()
    return func(*args, **kwargs)


class _ChannelsLastConv(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        return convolution(func, args, kwargs) if func in CONV2D else func(*args, **kwargs)


@contextlib.contextmanager
def channels_last_convs() -> Iterator[None]:
    """Within: CPU conv2d calls that are faster in channels-last layout run in it (`comparison_calls` does this
    and more, in one mode)."""
    with _ChannelsLastConv():
        yield
