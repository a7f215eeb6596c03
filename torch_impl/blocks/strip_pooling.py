"""Strip pooling gate and mixed pooling module, PyTorch twins of paddle_impl/blocks/strip_pooling.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.strip_pooling import (STRIP_H_KERNEL, STRIP_H_PADDING, STRIP_W_KERNEL, STRIP_W_PADDING,
                                            MixedPoolingOptions, StripPoolingOptions)
from torch_impl.layers import adaptive_avg_pool_2d, batch_norm, bilinear_resize


class StripPoolingBlock(nn.Module):
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
            self.fuse = nn.Sequential(nn.Conv2d(opts.mid, opts.in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strip_h = self.strip_h(x.mean(dim=3, keepdim=True))  # (B, M, H, 1)
        strip_w = self.strip_w(x.mean(dim=2, keepdim=True))  # (B, M, 1, W)
        mixed = torch.relu(strip_h + strip_w)  # broadcasting expands both strips to H x W
        return x * torch.sigmoid(self.fuse(mixed))


class MixedPoolingBlock(nn.Module):
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
        self.pyramid = nn.ModuleList([_conv_bn(inter, inter, 3, 1) for _ in opts.pool_sizes])
        self.strip_h = _conv_bn(inter, inter, STRIP_H_KERNEL, STRIP_H_PADDING)
        self.strip_w = _conv_bn(inter, inter, STRIP_W_KERNEL, STRIP_W_PADDING)
        self.fuse_square = _conv_bn(inter, inter, 3, 1, relu=True)
        self.fuse_strip = _conv_bn(inter, inter, 3, 1, relu=True)
        self.project = _conv_bn(2 * inter, opts.in_channels, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        height, width = x.shape[2], x.shape[3]
        square_in = self.reduce_square(x)
        strip_in = self.reduce_strip(x)
        square = self.local(square_in)
        for size, branch in zip(opts.pool_sizes, self.pyramid):
            pooled = branch(adaptive_avg_pool_2d(square_in, size))
            square = square + bilinear_resize(pooled, height, width, opts.align_corners)
        square = self.fuse_square(torch.relu(square))
        strip_h = self.strip_h(strip_in.mean(dim=3, keepdim=True))  # (B, Ci, H, 1)
        strip_w = self.strip_w(strip_in.mean(dim=2, keepdim=True))  # (B, Ci, 1, W)
        strip = self.fuse_strip(torch.relu(strip_h + strip_w))
        return torch.relu(x + self.project(torch.cat([square, strip], dim=1)))


def _conv_bn(in_channels: int, out_channels: int, kernel: int | tuple[int, int], padding: int | tuple[int, int],
             relu: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=padding, bias=False),
              batch_norm(2, out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)
