"""HybridSN hyperspectral classifier (Roy et al., IEEE GRSL 2020; seed 002).

`3d_first` (the paper): three spectral-spatial Conv3d layers, the spectral axis
folded into channels, one Conv2d, then Linear layers with dropout. `2d_first`
(seed 002's variant): a Conv2d over all bands first, its channels becoming the
depth axis of the three Conv3d layers. Every Linear width is derived from
`bands` and `patch_size`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.blocks.se import SEOptions
from crossattn.options import Options, positive, require
from crossattn.registry import register

Variant = Literal["3d_first", "2d_first"]


@dataclasses.dataclass(frozen=True)
class HybridSNOptions(Options):
    variant: Variant = "3d_first"
    #: spectral bands of the input patch (the paper: 30 principal components)
    bands: int = 30
    #: spatial side of the square input patch (the paper: 25)
    patch_size: int = 25
    num_classes: int = 16
    #: output channels of the three Conv3d layers
    conv3d_channels: tuple[int, int, int] = (8, 16, 32)
    #: spectral kernel depths of the three Conv3d layers (spatial kernels are 3x3)
    conv3d_depths: tuple[int, int, int] = (7, 5, 3)
    #: output channels of the 3x3 Conv2d layer
    conv2d_channels: int = 64
    #: widths of the two hidden Linear layers
    hidden: tuple[int, int] = (256, 128)
    #: dropout after each hidden layer (paper 0.4); training-mode dropout is random, so checks use 0
    dropout: float = 0.4
    #: ReLU after each hidden Linear layer (paper); seed 002's code has none (false)
    fc_relu: bool = True
    #: BatchNorm after every conv (seed 002); the paper has none (false)
    batch_norm: bool = True
    #: seed 002's SE-style channel attention before and after the Conv2d (3d_first only)
    attention: bool = False
    #: SE bottleneck factor r; width round(C / r) as in the seed
    attention_reduction: int = 16

    def validate(self) -> None:
        positive(self.bands, "bands")
        positive(self.patch_size, "patch_size")
        positive(self.num_classes, "num_classes")
        for name in ("conv3d_channels", "conv3d_depths", "hidden"):
            for i, value in enumerate(getattr(self, name)):
                positive(value, f"{name}[{i}]")
        positive(self.conv2d_channels, "conv2d_channels")
        positive(self.attention_reduction, "attention_reduction")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(not self.attention or self.variant == "3d_first", "attention",
                "the seed's attention blocks sit around the Conv2d of the 3d_first variant only")
        spectral_input = self.bands if self.variant == "3d_first" else self.conv2d_channels
        spectral_key = "bands" if self.variant == "3d_first" else "conv2d_channels"
        require(self.spectral_depth >= 1, spectral_key,
                f"the Conv3d kernels {list(self.conv3d_depths)} consume {sum(self.conv3d_depths) - 3} of the "
                f"{spectral_input} spectral planes; need at least {sum(self.conv3d_depths) - 2}")
        require(self.patch_size >= 9, "patch_size",
                f"four valid 3x3 convolutions need a patch of at least 9x9, got {self.patch_size}")

    @property
    def spectral_depth(self) -> int:
        """Depth left after the three Conv3d layers (no padding)."""
        start = self.bands if self.variant == "3d_first" else self.conv2d_channels
        return start - sum(d - 1 for d in self.conv3d_depths)

    @property
    def conv2d_in(self) -> int:
        """Input channels of the Conv2d: the bands (2d_first) or Conv3d channels x depth (3d_first)."""
        if self.variant == "2d_first":
            return self.bands
        return self.conv3d_channels[-1] * self.spectral_depth

    @property
    def final_size(self) -> int:
        """Spatial side after the four valid 3x3 convolutions."""
        return self.patch_size - 8

    @property
    def fc_in(self) -> int:
        """Width of the flattened features feeding the first Linear layer."""
        if self.variant == "2d_first":
            return self.conv3d_channels[-1] * self.spectral_depth * self.final_size ** 2
        return self.conv2d_channels * self.final_size ** 2

    def se(self, channels: int) -> SEOptions:
        return SEOptions(channels=channels, reduction=self.attention_reduction, rounding="round")

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        expected = (1, self.bands, self.patch_size, self.patch_size)
        require(len(shape) == 5 and tuple(shape[1:]) == expected, "input_shape",
                f"expected (N, 1, bands, patch, patch) = (N, {', '.join(map(str, expected))}), got {list(shape)}")


register("hybrid_sn", "model", HybridSNOptions, "models.hybrid_sn:HybridSN",
         "HybridSN hyperspectral classifier: 3-D then 2-D convolutions (or 2-D first), optional SE attention")
