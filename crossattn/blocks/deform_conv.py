"""Deformable convolution (Dai et al., ICCV 2017; v2 modulated: Zhu et al., CVPR 2019).

y(p) = sum_k w_k * x(p + p_k + dp_k) * m_k, with x read by bilinear interpolation
(zero outside the map) and m_k = 1 in v1. Options and sampling geometry shared by the twins.

Offset layout, as `paddle.vision.ops.deform_conv2d` reads it: offset channel
2 * (g * K + k) holds dy and 2 * (g * K + k) + 1 holds dx of kernel point k
(row-major over the kernel) in deformable group g; mask channel g * K + k holds m_k.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from crossattn.options import Options, positive, require
from crossattn.registry import register

if TYPE_CHECKING:  # numpy is imported where the geometry is computed: listing specs stays fast
    import numpy as np


@dataclasses.dataclass(frozen=True)
class DeformConvOptions(Options):
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    #: zero padding on each side; None pads dilation * (kernel_size - 1) // 2 ("same" at stride 1)
    padding: int | None = None
    dilation: int = 1
    groups: int = 1
    #: input channels split into this many groups, each with its own offsets (and mask)
    deformable_groups: int = 1
    #: v2: a sigmoid modulation scalar per sampling point
    modulated: bool = False
    #: the deformable conv's own bias (the offset predictor always has one)
    bias: bool = True

    def validate(self) -> None:
        for key in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups",
                    "deformable_groups"):
            positive(getattr(self, key), key)
        require(self.padding is None or self.padding >= 0, "padding", f"must be >= 0, got {self.padding}")
        require(self.in_channels % self.groups == 0, "groups",
                f"in_channels ({self.in_channels}) must be divisible by groups ({self.groups})")
        require(self.out_channels % self.groups == 0, "groups",
                f"out_channels ({self.out_channels}) must be divisible by groups ({self.groups})")
        require(self.in_channels % self.deformable_groups == 0, "deformable_groups",
                f"in_channels ({self.in_channels}) must be divisible by deformable_groups "
                f"({self.deformable_groups})")

    @property
    def pad(self) -> int:
        if self.padding is not None:
            return self.padding
        return self.dilation * (self.kernel_size - 1) // 2

    @property
    def kernel_points(self) -> int:
        """K: sampling points per output position and deformable group."""
        return self.kernel_size * self.kernel_size

    @property
    def offset_channels(self) -> int:
        return 2 * self.deformable_groups * self.kernel_points

    @property
    def mask_channels(self) -> int:
        return self.deformable_groups * self.kernel_points if self.modulated else 0

    @property
    def predictor_channels(self) -> int:
        """Output channels of the offset predictor: offsets, then mask logits (v2)."""
        return self.offset_channels + self.mask_channels

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        span = self.dilation * (self.kernel_size - 1) + 1
        return ((height + 2 * self.pad - span) // self.stride + 1,
                (width + 2 * self.pad - span) // self.stride + 1)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == 4, "input_shape", f"takes 4-dimensional input (N, C, H, W), got {len(shape)} dimensions")
        require(shape[1] == self.in_channels, "input_shape",
                f"channel dimension {shape[1]} does not match in_channels {self.in_channels}")
        out_h, out_w = self.output_size(shape[2], shape[3])
        require(out_h >= 1 and out_w >= 1, "input_shape",
                f"spatial size {tuple(shape[2:])} is smaller than the dilated kernel; the output would be empty")


def base_positions(options: DeformConvOptions, out_height: int, out_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Undeformed sampling rows and columns p + p_k, each [K, out_height, out_width] (integers as floats)."""
    import numpy as np

    taps = np.arange(options.kernel_size) * options.dilation
    tap_y, tap_x = np.repeat(taps, options.kernel_size), np.tile(taps, options.kernel_size)  # k row-major
    rows = np.arange(out_height) * options.stride - options.pad
    cols = np.arange(out_width) * options.stride - options.pad
    base_y = tap_y[:, None, None] + rows[None, :, None] + np.zeros((1, 1, out_width))
    base_x = tap_x[:, None, None] + cols[None, None, :] + np.zeros((1, out_height, 1))
    return base_y.astype(np.float64), base_x.astype(np.float64)


register("deform_conv", "block", DeformConvOptions, "blocks.deform_conv:DeformConvBlock",
         "Deformable convolution v1/v2: a zero-initialised offset (and mask) predictor then DeformConv2d")
