"""Efficient channel attention (Wang et al., CVPR 2020): options and kernel-size arithmetic shared by the twins.

s = sigmoid(conv1d_k(z)) over the channel axis, z the per-channel spatial mean of x;  y = x * s.
"""

from __future__ import annotations

import dataclasses
import math

from crossattn.blocks.se import Dimension
from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register

DEFAULT_GAMMA = 2.0
DEFAULT_B = 1.0


def adaptive_kernel_size(channels: int, gamma: float = DEFAULT_GAMMA, b: float = DEFAULT_B) -> int:
    """The paper's k = |log2(C) / gamma + b / gamma|_odd.

    As in the authors' code, t = int(|(log2 C + b) / gamma|) and an even t is
    bumped to t + 1: that is the nearest odd number, ties (t exactly even)
    going up. math.log2 is exact at powers of two; it gives the same k as the
    authors' math.log(C, 2) for every C below 2**16 (tested).
    """
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@dataclasses.dataclass(frozen=True)
class ECAOptions(Options):
    channels: int
    #: explicit odd kernel size; None -> adaptive_kernel_size(channels, gamma, b)
    kernel_size: int | None = None
    gamma: float = DEFAULT_GAMMA
    b: float = DEFAULT_B
    dimension: Dimension = 2
    #: smallest adaptive kernel (odd): 1 follows the paper's formula; timm raises it to 3
    min_kernel_size: int = 1

    def validate(self) -> None:
        positive(self.channels, "channels")
        positive(self.kernel_size, "kernel_size")
        require(self.kernel_size is None or self.kernel_size % 2 == 1, "kernel_size",
                f"must be odd so the channel convolution keeps C outputs, got {self.kernel_size}")
        require(self.gamma > 0, "gamma", f"must be > 0, got {self.gamma}")
        require(self.kernel_size is None or (self.gamma == DEFAULT_GAMMA and self.b == DEFAULT_B), "kernel_size",
                "give either kernel_size or gamma / b, not both")
        positive(self.min_kernel_size, "min_kernel_size")
        require(self.min_kernel_size % 2 == 1, "min_kernel_size",
                f"must be odd, as every kernel is, got {self.min_kernel_size}")
        require(self.kernel_size is None or self.min_kernel_size == 1, "min_kernel_size",
                "bounds the adaptive kernel; an explicit kernel_size is used as given")

    @property
    def kernel(self) -> int:
        if self.kernel_size is not None:
            return self.kernel_size
        return max(adaptive_kernel_size(self.channels, self.gamma, self.b), self.min_kernel_size)

    @property
    def padding(self) -> int:
        """Zero padding at both ends of the channel axis ('same' output length)."""
        return (self.kernel - 1) // 2

    @property
    def gate_shape(self) -> tuple[int, ...]:
        return (self.channels,) + (1,) * self.dimension

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, self.dimension)


register("eca", "block", ECAOptions, "blocks.eca:ECABlock",
         "Efficient channel attention: global average pool, 1-D conv across channels, sigmoid gate")
