"""Squeeze-and-excitation block (Hu et al., CVPR 2018): options and channel arithmetic shared by the twins.

s = gate(W2 relu(W1 z)), z the per-channel spatial mean of x;  y = x * s.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register

Rounding = Literal["floor", "round", "half_up"]
Gate = Literal["sigmoid", "hard_sigmoid"]
Dimension = Literal[1, 2, 3]



def squeezed_channels(channels: int, reduction: int, rounding: Rounding = "floor", divisor: int = 1) -> int:
    """Bottleneck width C / r as a multiple of `divisor`, at least one divisor.

    The width is divisor * q, q being C / (r * divisor) made an integer by `rounding`:
    `floor` (C // r for divisor 1); `round`, seed 002's `round(C / 16)` (HybridSN's attention
    block, SE-ResNet), Python's round with halves to even, so 24 / 16 = 1.5 gives 2 and
    40 / 16 = 2.5 gives 2; `half_up`, halves up (40 / 16 gives 3), the rule timm's blocks
    use, with divisor 8 for its SE. Computed in integers, so no float rounding enters.
    """
    step = reduction * divisor
    if rounding == "round":
        quotient = round(channels / step)
    elif rounding == "half_up":
        quotient = (2 * channels + step) // (2 * step)
    else:
        quotient = channels // step
    return max(quotient, 1) * divisor


@dataclasses.dataclass(frozen=True)
class SEOptions(Options):
    channels: int
    #: bottleneck factor r: the excitation MLP is C -> C/r -> C
    reduction: int = 16
    #: explicit bottleneck width; overrides reduction and rounding
    squeeze_channels: int | None = None
    #: how C/r becomes a width: C // r, seed 002's round(C / r) (halves to even) or half_up
    rounding: Rounding = "floor"
    #: the width is a multiple of this (at least one multiple): timm's SE rounds to 8
    width_divisor: int = 1
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
        positive(self.width_divisor, "width_divisor")
        require(self.squeeze_channels is None or self.width_divisor == 1, "width_divisor",
                "applies to the width computed from reduction, not to an explicit squeeze_channels")

    @property
    def squeeze(self) -> int:
        """Width of the excitation bottleneck."""
        if self.squeeze_channels is not None:
            return self.squeeze_channels
        return squeezed_channels(self.channels, self.reduction, self.rounding, self.width_divisor)

    @property
    def gate_shape(self) -> tuple[int, ...]:
        """Shape of the per-channel scale without the batch axis: (C, 1, ...), broadcast over space."""
        return (self.channels,) + (1,) * self.dimension

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, self.dimension)


register("se", "block", SEOptions, "blocks.se:SEBlock",
         "Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid channel gate")
