"""Squeeze-and-excitation block (Hu et al., CVPR 2018): options and channel arithmetic shared by the twins.

s = gate(W2 relu(W1 z)), z the per-channel spatial mean of x;  y = x * s.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register

Rounding = Literal["floor", "round"]
Gate = Literal["sigmoid", "hard_sigmoid"]
Dimension = Literal[1, 2, 3]



def squeezed_channels(channels: int, reduction: int, rounding: Rounding = "floor") -> int:
    """Bottleneck width C / r, at least 1.

    `floor` is C // r. `round` is seed 002's `round(C / 16)` (HybridSN's attention
    block, SE-ResNet): Python's round, nearest integer with halves to even, so
    24 / 16 = 1.5 gives 2 and 40 / 16 = 2.5 gives 2.
    """
    width = round(channels / reduction) if rounding == "round" else channels // reduction
    return max(width, 1)



@dataclasses.dataclass(frozen=True)
class SEOptions(Options):
    channels: int
    #: bottleneck factor r: the excitation MLP is C -> C/r -> C
    reduction: int = 16
    #: explicit bottleneck width; overrides reduction and rounding
    squeeze_channels: int | None = None
    #: how C/r becomes a width: C // r, or seed 002's round(C / r) (halves to even)
    rounding: Rounding = "floor"
    #: sigmoid (paper) or hard sigmoid relu6(x + 3) / 6 (MobileNetV3-style)
    gate: Gate = "sigmoid"
    #: 1x1 convolutions instead of Linear layers (same arithmetic, conv weight layout)
    use_conv: bool = False
    dimension: Dimension = 2

    def validate(self) -> None:
        positive(self.channels, "channels")
        positive(self.reduction, "reduction")
        positive(self.squeeze_channels, "squeeze_channels")
        require(self.squeeze_channels is None or self.reduction == 16, "reduction",
                "give either squeeze_channels or reduction, not both")
        require(self.squeeze_channels is None or self.rounding == "floor", "rounding",
                "applies to the width computed from reduction, not to an explicit squeeze_channels")

    @property
    def squeeze(self) -> int:
        """Width of the excitation bottleneck."""
        if self.squeeze_channels is not None:
            return self.squeeze_channels
        return squeezed_channels(self.channels, self.reduction, self.rounding)

    @property
    def gate_shape(self) -> tuple[int, ...]:
        """Shape of the per-channel scale without the batch axis: (C, 1, ...), broadcast over space."""
        return (self.channels,) + (1,) * self.dimension

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, self.dimension)


register("se", "block", SEOptions, "blocks.se:SEBlock",
         "Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid channel gate")
