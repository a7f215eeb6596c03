"""Deformable convolution, PaddlePaddle twin of torch_impl/blocks/deform_conv.py.

The sampling is written in plain tensor ops (gather-based bilinear interpolation),
so both twins compute it the same way, step for step.
"""

from __future__ import annotations

import math

import paddle
from paddle import nn

from crossattn.blocks.deform_conv import DeformConvOptions, base_positions
from paddle_impl.layers import zero_init_layer


def _sample_columns(x: paddle.Tensor, offset: paddle.Tensor, mask: paddle.Tensor | None,
                    opts: DeformConvOptions) -> paddle.Tensor:
    """x read at p + p_k + dp_k (times m_k): columns [B, C, K, out_h * out_w], zero outside the map.

    Conventions of paddle's kernel: corners are floor(y) and floor(y) + 1 (so at an exact
    integer position the gradient is the one-sided difference towards +1), and a point with
    y <= -1, y >= H, x <= -1 or x >= W contributes nothing, its offset gradient included.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = offset.shape[2], offset.shape[3]
    groups, points = opts.deformable_groups, opts.kernel_points
    base_y, base_x = base_positions(opts, out_h, out_w)
    offset = offset.reshape([batch, groups, points, 2, out_h, out_w])
    pos_y = paddle.to_tensor(base_y).astype(x.dtype) + offset[:, :, :, 0]  # (B, G, K, out_h, out_w)
    pos_x = paddle.to_tensor(base_x).astype(x.dtype) + offset[:, :, :, 1]
    inside = (pos_y > -1) & (pos_y < height) & (pos_x > -1) & (pos_x < width)
    low_y, low_x = paddle.floor(pos_y).detach(), paddle.floor(pos_x).detach()
    frac_y, frac_x = pos_y - low_y, pos_x - low_x
    values = x.reshape([batch, groups, channels // groups, height * width])
    sampled = paddle.zeros([batch, groups, channels // groups, points * out_h * out_w], dtype=x.dtype)
    for step_y, weight_y in ((0, 1 - frac_y), (1, frac_y)):
        for step_x, weight_x in ((0, 1 - frac_x), (1, frac_x)):
            row, col = low_y + step_y, low_x + step_x
            valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            index = (row.clip(0, height - 1) * width + col.clip(0, width - 1)).astype("int64")
            index = index.reshape([batch, groups, 1, -1]).expand([-1, -1, channels // groups, -1])
            corner = paddle.take_along_axis(values, index, 3)
            weight = (weight_y * weight_x * valid.astype(x.dtype)).reshape([batch, groups, 1, -1])
            sampled = sampled + weight * corner
    if mask is not None:
        sampled = sampled * mask.reshape([batch, groups, 1, -1])
    return sampled.reshape([batch, channels, points, out_h * out_w])


class DeformConv2d(nn.Layer):
    """Deformable conv with its own weight [out, in / groups, k, k]; offsets (and mask) are inputs."""

    crossattn_layer_kind = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, deformable_groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        self.options = opts = DeformConvOptions(
            in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            padding=padding, dilation=dilation, groups=groups, deformable_groups=deformable_groups, bias=bias)
        self.weight = self.create_parameter(list(opts.weight_shape))
        self.bias = self.create_parameter([opts.out_channels], is_bias=True) if opts.bias else None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The framework's own Conv2D default initialisation."""
        nn.initializer.Normal(0.0, math.sqrt(2.0 / (self.options.in_channels * self.options.kernel_points)))(
            self.weight)
        if self.bias is not None:
            nn.initializer.Constant(0.0)(self.bias)

    def forward(self, x: paddle.Tensor, offset: paddle.Tensor, mask: paddle.Tensor | None = None) -> paddle.Tensor:
        opts = self.options
        batch = x.shape[0]
        out_h, out_w = offset.shape[2], offset.shape[3]
        columns = _sample_columns(x, offset, mask, opts).reshape([batch, opts.groups, -1, out_h * out_w])
        # (1, groups, out / groups, in / groups * K): paddle's matmul cannot backpropagate a 3-D x 4-D broadcast
        weight = self.weight.reshape([1, opts.groups, opts.out_channels // opts.groups, -1])
        out = paddle.matmul(weight, columns).reshape([batch, opts.out_channels, out_h, out_w])
        if self.bias is not None:
            out = out + self.bias.reshape([1, -1, 1, 1])
        return out


class DeformConvBlock(nn.Layer):
    """Offset (and mask) predictor conv, zero-initialised, then DeformConv2d: starts as a plain conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, deformable_groups: int = 1,
                 modulated: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.options = opts = DeformConvOptions(
            in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            padding=padding, dilation=dilation, groups=groups, deformable_groups=deformable_groups,
            modulated=modulated, bias=bias)
        # same kernel, stride, padding and dilation as the deformable conv: one offset per output position
        self.offset_conv = zero_init_layer(nn.Conv2D(
            opts.in_channels, opts.predictor_channels, opts.kernel_size, stride=opts.stride, padding=opts.pad,
            dilation=opts.dilation))
        self.conv = DeformConv2d(opts.in_channels, opts.out_channels, opts.kernel_size, stride=opts.stride,
                                 padding=opts.pad, dilation=opts.dilation, groups=opts.groups,
                                 deformable_groups=opts.deformable_groups, bias=opts.bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        opts = self.options
        predicted = self.offset_conv(x)
        offset = predicted[:, : opts.offset_channels]
        mask = nn.functional.sigmoid(predicted[:, opts.offset_channels:]) if opts.modulated else None
        return self.conv(x, offset, mask)
