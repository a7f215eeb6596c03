"""Strip pooling gate and mixed pooling module, PaddlePaddle twins of torch_impl/blocks/strip_pooling.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.blocks.strip_pooling import (STRIP_H_KERNEL, STRIP_H_PADDING, STRIP_W_KERNEL, STRIP_W_PADDING,
                                            MixedPoolingOptions, StripPoolingOptions)
from paddle_impl.layers import adaptive_avg_pool_2d, batch_norm, bilinear_resize


class StripPoolingBlock(nn.Layer):
    """z = x * sigmoid(fuse(ReLU(expand(conv_h(mean_W x)) + expand(conv_w(mean_H x)))))."""

    def __init__(self, in_channels: int, mid_channels: int | None = None, output_bn: bool = False) -> None:
        super().__init__()
        self.options = opts = StripPoolingOptions(in_channels=in_channels, mid_channels=mid_channels,
                                                  output_bn=output_bn)
        self.strip_h = _conv_bn(opts.in_channels, opts.mid, STRIP_H_KERNEL, STRIP_H_PADDING)
        self.strip_w = _conv_bn(opts.in_channels, opts.mid, STRIP_W_KERNEL, STRIP_W_PADDING)
        if opts.output_bn:
            self.fuse = _conv_bn(opts.mid, opts.in_channels, 1, 0)
        else:
            self.fuse = nn.Sequential(nn.Conv2D(opts.mid, opts.in_channels, kernel_size=1))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        strip_h = self.strip_h(x.mean(axis=3, keepdim=True))  # (B, M, H, 1)
        strip_w = self.strip_w(x.mean(axis=2, keepdim=True))  # (B, M, 1, W)
        mixed = nn.functional.relu(strip_h + strip_w)  # broadcasting expands both strips to H x W
        return x * nn.functional.sigmoid(self.fuse(mixed))


class MixedPoolingBlock(nn.Layer):
    """z = ReLU(x + project([square path, strip path])): pyramid pooling beside strip pooling."""

    def __init__(self, in_channels: int, pool_sizes: tuple[int, ...] = (20, 12), reduction: int = 4,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.options = opts = MixedPoolingOptions(in_channels=in_channels, pool_sizes=pool_sizes,
                                                  reduction=reduction, align_corners=align_corners)
        inter = opts.inter
        self.reduce_square = _conv_bn(opts.in_channels, inter, 1, 0, relu=True)
        self.reduce_strip = _conv_bn(opts.in_channels, inter, 1, 0, relu=True)
        self.local = _conv_bn(inter, inter, 3, 1)
        self.pyramid = nn.LayerList([_conv_bn(inter, inter, 3, 1) for _ in opts.pool_sizes])
        self.strip_h = _conv_bn(inter, inter, STRIP_H_KERNEL, STRIP_H_PADDING)
        self.strip_w = _conv_bn(inter, inter, STRIP_W_KERNEL, STRIP_W_PADDING)
        self.fuse_square = _conv_bn(inter, inter, 3, 1, relu=True)
        self.fuse_strip = _conv_bn(inter, inter, 3, 1, relu=True)
        self.project = _conv_bn(2 * inter, opts.in_channels, 1, 0)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        opts = self.options
        height, width = x.shape[2], x.shape[3]
        square_in = self.reduce_square(x)
        strip_in = self.reduce_strip(x)
        square = self.local(square_in)
        for size, branch in zip(opts.pool_sizes, self.pyramid):
            pooled = branch(adaptive_avg_pool_2d(square_in, size))
            square = square + bilinear_resize(pooled, height, width, opts.align_corners)
        square = self.fuse_square(nn.functional.relu(square))
        strip_h = self.strip_h(strip_in.mean(axis=3, keepdim=True))  # (B, Ci, H, 1)
        strip_w = self.strip_w(strip_in.mean(axis=2, keepdim=True))  # (B, Ci, 1, W)
        strip = self.fuse_strip(nn.functional.relu(strip_h + strip_w))
        return nn.functional.relu(x + self.project(paddle.concat([square, strip], axis=1)))


def _conv_bn(in_channels: int, out_channels: int, kernel: int | tuple[int, int], padding: int | tuple[int, int],
             relu: bool = False) -> nn.Sequential:
    layers = [nn.Conv2D(in_channels, out_channels, kernel_size=kernel, padding=padding, bias_attr=False),
              batch_norm(2, out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)
