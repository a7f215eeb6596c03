"""Squeeze-and-excitation block, PyTorch twin of paddle_impl/blocks/se.py."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from crossattn.blocks.se import Gate, Rounding, SEOptions
from torch_impl.layers import conv_nd, global_avg_pool


def apply_gate(x: torch.Tensor, kind: Gate) -> torch.Tensor:
    """Sigmoid, or relu6(x + 3) / 6 written out: paddle's built-in hardsigmoid holds its slope 1/6 in float32."""
    if kind == "hard_sigmoid":
        return F.relu6(x + 3.0) / 6.0
    return torch.sigmoid(x)


class SEBlock(nn.Module):
    """y = x * gate(fc2(relu(fc1(mean over space of x)))), one scale per sample and channel."""

    def __init__(self, channels: int, reduction: int = 16, squeeze_channels: int | None = None,
                 rounding: Rounding = "floor", gate: Gate = "sigmoid", use_conv: bool = False,
                 dimension: int = 2, width_divisor: int = 1) -> None:
        super().__init__()
        self.options = opts = SEOptions(
            channels=channels, reduction=reduction, squeeze_channels=squeeze_channels, rounding=rounding,
            gate=gate, use_conv=use_conv, dimension=dimension, width_divisor=width_divisor)
        if opts.use_conv:
            conv = conv_nd(opts.dimension)
            self.fc1 = conv(opts.channels, opts.squeeze, kernel_size=1)
            self.fc2 = conv(opts.squeeze, opts.channels, kernel_size=1)
        else:
            self.fc1 = nn.Linear(opts.channels, opts.squeeze)
            self.fc2 = nn.Linear(opts.squeeze, opts.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        squeezed = global_avg_pool(x)  # (B, C, 1, ...)
        if not opts.use_conv:
            squeezed = squeezed.flatten(1)  # (B, C)
        scale = apply_gate(self.fc2(F.relu(self.fc1(squeezed))), opts.gate)
        return x * scale.reshape([x.shape[0], *opts.gate_shape])
