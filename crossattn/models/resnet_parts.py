"""Shape arithmetic of the ResNet family, shared by every ResNet-based model and both twins.

A `UnitPlan` says what one residual unit is built with; `plan_stages` lays out
the units of all stages, strides and dilations included, so the twins only
loop over plans and never repeat the arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

Stem = Literal["imagenet", "cifar"]
UnitKind = Literal["basic", "bottleneck"]

#: output channels of a unit per unit of `planes`
EXPANSION = {"basic": 1, "bottleneck": 4}


@dataclasses.dataclass(frozen=True)
class UnitPlan:
    """One residual unit: a 3x3 pair (basic) or 1x1-3x3-1x1 (bottleneck) plus its shortcut."""

    in_channels: int
    planes: int
    out_channels: int
    stride: int = 1
    dilation: int = 1

    @property
    def projects(self) -> bool:
        """The shortcut needs a 1x1 projection when the shape changes."""
        return self.stride != 1 or self.in_channels != self.out_channels


def plan_stages(stem_channels: int, widths: Sequence[int], blocks: Sequence[int], kind: UnitKind = "basic",
                dilate: Sequence[bool] | None = None) -> list[list[UnitPlan]]:
    """Units of every stage: stride 2 entering stages 2.., or dilation instead where `dilate` says.

    Dilation follows torchvision's `replace_stride_with_dilation`: a dilated stage
    multiplies the running dilation by 2 instead of striding; its first unit keeps
    the previous dilation, the others use the new one.
    """
    dilate = list(dilate) if dilate is not None else [False] * len(widths)
    expansion = EXPANSION[kind]
    stages: list[list[UnitPlan]] = []
    channels, dilation = stem_channels, 1
    for index, (width, count) in enumerate(zip(widths, blocks)):
        stride = 1 if index == 0 else 2
        previous = dilation
        if index > 0 and dilate[index]:
            dilation, stride = dilation * stride, 1
        units = []
        for unit in range(count):
            units.append(UnitPlan(channels, width, width * expansion, stride if unit == 0 else 1,
                                  previous if unit == 0 else dilation))
            channels = width * expansion
        stages.append(units)
    return stages


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis (floor rounding, as both frameworks)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def stem_out(size: int, stem: Stem) -> int:
    """Spatial size after the stem: 7x7/2 conv and 3x3/2 max-pool (imagenet), or a 3x3/1 conv (cifar)."""
    if stem == "cifar":
        return size
    return conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)


def stage_sizes(size: int, stem: Stem, stages: Sequence[Sequence[UnitPlan]]) -> list[int]:
    """Spatial size after each stage, from the input's size along one axis."""
    size = stem_out(size, stem)
    sizes = []
    for units in stages:
        for unit in units:
            size = conv_out(size, 3, unit.stride, unit.dilation, unit.dilation)
        sizes.append(size)
    return sizes
