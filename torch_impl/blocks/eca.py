"""Efficient channel attention, PyTorch twin of paddle_impl/blocks/eca.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.eca import DEFAULT_B, DEFAULT_GAMMA, ECAOptions
from torch_impl.layers import global_avg_pool


class ECABlock(nn.Module):
    """y = x * sigmoid(conv1d over the channel axis of the spatial means); k channels interact, no MLP."""

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = DEFAULT_GAMMA,
                 b: float = DEFAULT_B, dimension: int = 2, min_kernel_size: int = 1) -> None:
        super().__init__()
        self.options = opts = ECAOptions(channels=channels, kernel_size=kernel_size, gamma=gamma, b=b,
                                         dimension=dimension, min_kernel_size=min_kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size=opts.kernel, padding=opts.padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        batch = x.shape[0]
        channel_sequence = global_avg_pool(x).reshape([batch, 1, opts.channels])  # channels as a 1-D signal
        scale = torch.sigmoid(self.conv(channel_sequence))
        return x * scale.reshape([batch, *opts.gate_shape])
