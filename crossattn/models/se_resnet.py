"""SE-ResNet 18/34/50/101/152 (Hu et al., CVPR 2018; seed 002).

Each residual unit scales its residual branch with a squeeze-and-excitation
block before the shortcut is added. Global pooling is adaptive (a mean over
space), so any input size large enough for five halvings works.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from crossattn.blocks.se import SEOptions
from crossattn.models.resnet_parts import UnitKind, UnitPlan, plan_stages
from crossattn.options import Options, check_feature_map, positive
from crossattn.registry import register

Depth = Literal[18, 34, 50, 101, 152]

#: depth -> residual unit and units per stage (He et al., 2016)
DEPTHS: dict[int, tuple[UnitKind, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class SEResNetOptions(Options):
    image_classifier: ClassVar[bool] = True
    depth: Depth = 50
    num_classes: int = 1000
    in_channels: int = 3
    #: channels of the stem and of stage 1's units; stages use width x (1, 2, 4, 8) (x4 out for bottlenecks)
    width: int = 64
    #: SE bottleneck factor r; the seed's width is round(C / r), as `rounding: round` of the se block
    se_reduction: int = 16

    def validate(self) -> None:
        positive(self.num_classes, "num_classes")
        positive(self.in_channels, "in_channels")
        positive(self.width, "width")
        positive(self.se_reduction, "se_reduction")

    @property
    def unit(self) -> UnitKind:
        return DEPTHS[self.depth][0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in (1, 2, 4, 8))

    @property
    def stages(self) -> list[list[UnitPlan]]:
        return plan_stages(self.width, self.widths, DEPTHS[self.depth][1], self.unit)

    @property
    def out_channels(self) -> int:
        return self.stages[-1][-1].out_channels

    def se(self, channels: int) -> SEOptions:
        """The SE block of a unit whose residual branch has `channels` channels."""
        return SEOptions(channels=channels, reduction=self.se_reduction, rounding="round")

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.in_channels, 2, "in_channels")


register("se_resnet", "model", SEResNetOptions, "models.se_resnet:SEResNet",
         "SE-ResNet 18/34/50/101/152: squeeze-and-excitation on every residual branch")
