"""Convolutional block attention module (Woo et al., ECCV 2018): options shared by the twins.

Channel gate: y = x * sigmoid(MLP(avgpool x) + MLP(maxpool x));
spatial gate: z = y * sigmoid(conv_k([mean_c y; max_c y])).
"""

from __future__ import annotations

import dataclasses

from crossattn.blocks.se import Rounding, squeezed_channels
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
    #: how C/r becomes the hidden width: floor, round (halves to even) or half_up (timm: 24/16 -> 2)
    rounding: Rounding = "floor"
    #: explicit hidden width of the channel MLP; overrides reduction and rounding
    hidden_channels: int | None = None
    #: biases in the channel MLP (the paper's and the authors' layers have them; timm's have none)
    mlp_bias: bool = True
    #: a BatchNorm after the spatial gate's conv, before the sigmoid (the authors' code and timm)
    spatial_norm: bool = False
    #: 1x1 convolutions instead of Linear layers in the channel MLP (same arithmetic, conv layout)
    use_conv: bool = False

    def validate(self) -> None:
        positive(self.channels, "channels")
        positive(self.reduction, "reduction")
        positive(self.spatial_kernel, "spatial_kernel")
        require(self.spatial_kernel % 2 == 1, "spatial_kernel",
                f"must be odd so the attention map keeps the input's size, got {self.spatial_kernel}")
        positive(self.hidden_channels, "hidden_channels")
        require(self.hidden_channels is None or (self.reduction == 16 and self.rounding == "floor"),
                "hidden_channels", "give either hidden_channels or reduction / rounding, not both")
        require(not (self.spatial_norm and self.no_spatial), "spatial_norm",
                "normalises the spatial gate, which no_spatial removes")

    @property
    def hidden(self) -> int:
        """Width of the shared channel MLP."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        return squeezed_channels(self.channels, self.reduction, self.rounding)

    @property
    def spatial_padding(self) -> int:
        return self.spatial_kernel // 2

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, 2)


register("cbam", "block", CBAMOptions, "blocks.cbam:CBAMBlock",
         "CBAM: channel gate from avg- and max-pooled MLP, then a spatial gate from a k x k conv")
