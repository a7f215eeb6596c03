"""Res2Net bottleneck (Gao et al., TPAMI 2019): options and channel arithmetic shared by the twins.

The 1x1 conv's output is split into `scale` groups x_1..x_s of `width` channels; with
K_i a 3x3 conv + BN + ReLU, y_1 = K_1(x_1), y_i = K_i(x_i + y_{i-1}) for 1 < i < s, and
the last split x_s is passed through unchanged (the order of the authors' released code;
the paper numbers the untouched split first). A stage's first block ("stage") convolves
every split on its own, strided, and average-pools the last one.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register

#: output channels = planes * EXPANSION, as in the ResNet bottleneck
EXPANSION = 4

Shortcut = Literal["auto", "conv", "avg_conv", "none"]


@dataclasses.dataclass(frozen=True)
class Res2NetOptions(Options):
    inplanes: int
    planes: int
    stride: int = 1
    #: s, the number of splits
    scale: int = 4
    #: width per split = floor(planes * base_width / 64)
    base_width: int = 26
    #: "stage": first block of a stage (splits not added, last split average-pooled)
    stype: Literal["normal", "stage"] = "normal"
    #: shortcut projection: "auto" = "conv" when stride or channels change, else "none";
    #: "conv" = 1x1 conv (strided) + BN; "avg_conv" = average pool then 1x1 conv + BN (Res2Net v1b)
    downsample: Shortcut = "auto"

    def validate(self) -> None:
        for key in ("inplanes", "planes", "stride", "scale", "base_width"):
            positive(getattr(self, key), key)
        require(self.width >= 1, "base_width",
                f"planes * base_width / 64 = {self.planes} * {self.base_width} / 64 is below 1: no channel per split")
        require(self.stype == "stage" or self.stride == 1 or self.scale == 1, "stride",
                "a normal block passes its last split through unchanged, so it cannot stride; use stype: stage")
        require(self.downsample != "none" or not self.needs_projection, "downsample",
                f"the shortcut changes shape (inplanes {self.inplanes} -> {self.out_channels}, stride {self.stride}); "
                "an identity shortcut cannot add it")

    @property
    def width(self) -> int:
        return self.planes * self.base_width // 64

    @property
    def split_channels(self) -> int:
        """Channels between the two 1x1 convs: width * scale."""
        return self.width * self.scale

    @property
    def out_channels(self) -> int:
        return self.planes * EXPANSION

    @property
    def branches(self) -> int:
        """Number of 3x3 convs: every split but the passed-through last one (one when scale is 1)."""
        return max(self.scale - 1, 1)

    @property
    def passes_last_split(self) -> bool:
        return self.scale > 1

    @property
    def needs_projection(self) -> bool:
        return self.stride != 1 or self.inplanes != self.out_channels

    @property
    def shortcut(self) -> Literal["conv", "avg_conv", "none"]:
        if self.downsample == "auto":
            return "conv" if self.needs_projection else "none"
        return self.downsample

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.inplanes, 2, "inplanes")


register("res2net", "block", Res2NetOptions, "blocks.res2net:Res2NetBottleneck",
         "Res2Net bottleneck: hierarchical 3x3 convs over channel splits, normal or stage-opening")
