"""Convolutional block attention module (Woo et al., ECCV 2018): options shared by the twins.

Channel gate: y = x * sigmoid(MLP(avgpool x) + MLP(maxpool x));
spatial gate: z = y * sigmoid(conv_k([mean_c y; max_c y])).
"""

from __future__ import annotations

import dataclasses

from crossattn.blocks.se import squeezed_channels
from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register


@dataclasses.dataclass(frozen=True)
class CBAMOptions(Options):
    channels: int
    #: bottleneck factor r of the shared MLP C -> C // r -> C (at least 1 hidden unit)
    reduction: int = 16
    #: side of the spatial gate's square convolution; odd, so the map keeps its size
    spatial_kernel: int = 7
    #: channel gate only (the paper's "channel attention" ablation)
    no_spatial: bool = False

    def validate(self) -> None:
        positive(self.channels, "channels")
        positive(self.reduction, "reduction")
        positive(self.spatial_kernel, "spatial_kernel")
        require(self.spatial_kernel % 2 == 1, "spatial_kernel",
                f"must be odd so the attention map keeps the input's size, got {self.spatial_kernel}")

    @property
    def hidden(self) -> int:
        """Width of the shared channel MLP."""
        return squeezed_channels(self.channels, self.reduction, "floor")

    @property
    def spatial_padding(self) -> int:
        return self.spatial_kernel // 2

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, 2)


register("cbam", "block", CBAMOptions, "blocks.cbam:CBAMBlock",
         "CBAM: channel gate from avg- and max-pooled MLP, then a spatial gate from a k x k conv")
