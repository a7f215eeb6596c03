"""Selective Kernel convolution, PyTorch twin of paddle_impl/blocks/selective_kernel.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.selective_kernel import KERNEL_SIZE, SelectiveKernelOptions
from torch_impl.layers import batch_norm


class SelectiveKernelConv(nn.Module):
    """Convolve with M dilated 3x3 paths and let each channel choose among them by a softmax."""

    def __init__(self, in_channels: int, out_channels: int | None = None, stride: int = 1, paths: int = 2,
                 groups: int = 32, reduction: int = 16, min_dim: int = 32,
                 select_bias: bool = False, split_input: bool = False) -> None:
        super().__init__()
        self.options = opts = SelectiveKernelOptions(
            in_channels=in_channels, out_channels=out_channels, stride=stride, paths=paths, groups=groups,
            reduction=reduction, min_dim=min_dim, select_bias=select_bias, split_input=split_input)
        self.paths = nn.ModuleList([_path(opts, i) for i in range(opts.paths)])
        self.compress = nn.Sequential(nn.Linear(opts.channels, opts.reduced_dim, bias=False),
                                      batch_norm(1, opts.reduced_dim),
                                      nn.ReLU())
        self.projections = nn.ModuleList([nn.Linear(opts.reduced_dim, opts.channels, bias=opts.select_bias)
                                          for _ in range(opts.paths)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        inputs = (torch.split(x, opts.path_in_channels, dim=1) if opts.split_input  # path i sees its share
                  else [x] * opts.paths)
        features = torch.stack([path(part) for path, part in zip(self.paths, inputs)], dim=1)  # (B, M, C, H, W)
        descriptor = features.sum(dim=1).mean(dim=(2, 3))  # (B, C): global average pool of the fused paths
        compressed = self.compress(descriptor)  # (B, d)
        scores = torch.stack([projection(compressed) for projection in self.projections], dim=1)  # (B, M, C)
        weights = torch.softmax(scores, dim=1)  # across paths, per channel
        return (features * weights.reshape(*weights.shape, 1, 1)).sum(dim=1)


def _path(opts: SelectiveKernelOptions, index: int) -> nn.Sequential:
    dilation = opts.dilation(index)
    return nn.Sequential(nn.Conv2d(opts.path_in_channels, opts.channels, kernel_size=KERNEL_SIZE, stride=opts.stride,
                                   padding=dilation, dilation=dilation, groups=opts.groups, bias=False),
                         batch_norm(2, opts.channels),
                         nn.ReLU())
