"""Strip pooling (Hou et al., CVPR 2020): the strip pooling gate and the mixed pooling module.

Options and channel arithmetic shared by the twins; the resampling matrices live in crossattn.resample.
Adaptive average pooling and bilinear resizing are linear maps along each
spatial axis: out = R_h x R_w^T. The twins apply the matrices built here
instead of the frameworks' own operators, because paddle's operators differ
from torch's in float64 (see `docs/blocks/strip_pooling.md`):
- paddle's bilinear interpolate computes source coordinates and weights in
  float32, and maps an output size of 1 to the first input row where torch
  (align_corners=False) takes the centre;
- paddle's adaptive average pool scales its gradient by a float32 1/bin_size.
"""

from __future__ import annotations

import dataclasses

from crossattn.options import Options, positive, require
from crossattn.registry import register

#: strip convs: 3x1 along the Hx1 strip (pooled over W), 1x3 along the 1xW strip (pooled over H);
#: the padding keeps each strip's length
STRIP_H_KERNEL, STRIP_H_PADDING = (3, 1), (1, 0)
STRIP_W_KERNEL, STRIP_W_PADDING = (1, 3), (0, 1)


@dataclasses.dataclass(frozen=True)
class StripPoolingOptions(Options):
    in_channels: int
    #: channels of the two strip convs; None -> in_channels (the paper's code)
    mid_channels: int | None = None
    #: BatchNorm after the 1x1 fusion conv; the paper's code has a biased conv and no BN
    output_bn: bool = False

    def validate(self) -> None:
        positive(self.in_channels, "in_channels")
        positive(self.mid_channels, "mid_channels")

    @property
    def mid(self) -> int:
        return self.mid_channels if self.mid_channels is not None else self.in_channels

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_image_input(shape, self.in_channels, "strip pooling")


@dataclasses.dataclass(frozen=True)
class MixedPoolingOptions(Options):
    in_channels: int
    #: output sizes of the square (pyramid) adaptive average pools; the paper's code uses 20 and 12
    pool_sizes: tuple[int, ...] = (20, 12)
    #: channel reduction inside the module: C -> C/reduction (4 in the paper's code)
    reduction: int = 4
    #: bilinear upsampling of the pooled maps: corner-aligned (the paper's code) or half-pixel
    align_corners: bool = False

    def validate(self) -> None:
        positive(self.in_channels, "in_channels")
        positive(self.reduction, "reduction")
        require(self.in_channels % self.reduction == 0, "reduction",
                f"in_channels ({self.in_channels}) must be divisible by reduction ({self.reduction})")
        require(len(self.pool_sizes) > 0, "pool_sizes", "give at least one pool size")
        for i, size in enumerate(self.pool_sizes):
            positive(size, f"pool_sizes[{i}]")

    @property
    def inter(self) -> int:
        """Channels of both inner paths."""
        return self.in_channels // self.reduction

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_image_input(shape, self.in_channels, "mixed pooling")


def _check_image_input(shape: tuple[int, ...], in_channels: int, what: str) -> None:
    require(len(shape) == 4, "input_shape",
            f"the {what} module takes 4-dimensional input (N, C, H, W), got {len(shape)} dimensions")
    require(shape[1] == in_channels, "input_shape",
            f"channel dimension {shape[1]} does not match in_channels {in_channels}")


register("strip_pooling", "block", StripPoolingOptions, "blocks.strip_pooling:StripPoolingBlock",
         "Strip pooling gate: Hx1 and 1xW average strips, 1-D convs, expand, 1x1 conv, sigmoid, x * gate")
register("mixed_pooling", "block", MixedPoolingOptions, "blocks.strip_pooling:MixedPoolingBlock",
         "Mixed pooling module: pyramid (square) pooling and strip pooling paths, concatenated, residual")
