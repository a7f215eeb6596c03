"""Convolutional block attention module, PyTorch twin of paddle_impl/blocks/cbam.py.

Maxima are taken with amax in both twins: on ties (a ReLU'd input has many) torch.max(dim)
sends the whole gradient to one element and paddle.max splits it evenly; amax splits it in both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from crossattn.blocks.cbam import CBAMOptions
from torch_impl.layers import batch_norm, global_avg_pool


class ChannelGate(nn.Module):
    """x * sigmoid(MLP(spatial mean) + MLP(spatial max)); the MLP's weights are shared by both descriptors."""

    def __init__(self, channels: int, hidden: int, bias: bool = True, use_conv: bool = False) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
            self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        else:
            self.fc1 = nn.Linear(channels, hidden, bias=bias)
            self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, peak = global_avg_pool(x), torch.amax(x, dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        if not self.use_conv:
            mean, peak = mean.flatten(1), peak.flatten(1)
        logits = self._mlp(mean) + self._mlp(peak)
        return x * torch.sigmoid(logits).reshape([x.shape[0], x.shape[1], 1, 1])

    def _mlp(self, descriptor: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(descriptor)))


class SpatialGate(nn.Module):
    """x * sigmoid(conv([mean over channels; max over channels])), one weight per position."""

    def __init__(self, kernel_size: int, padding: int, norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=padding, bias=False)
        self.norm = batch_norm(2, 1) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        logits = self.conv(pooled)
        if self.norm is not None:
            logits = self.norm(logits)
        return x * torch.sigmoid(logits)


class CBAMBlock(nn.Module):
    """Channel gate, then (unless no_spatial) spatial gate, applied in sequence."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, no_spatial: bool = False,
                 rounding: str = "floor", hidden_channels: int | None = None, mlp_bias: bool = True,
                 spatial_norm: bool = False, use_conv: bool = False) -> None:
        super().__init__()
        self.options = opts = CBAMOptions(channels=channels, reduction=reduction, spatial_kernel=spatial_kernel,
                                          no_spatial=no_spatial, rounding=rounding, hidden_channels=hidden_channels,
                                          mlp_bias=mlp_bias, spatial_norm=spatial_norm, use_conv=use_conv)
        self.channel_gate = ChannelGate(opts.channels, opts.hidden, opts.mlp_bias, opts.use_conv)
        self.spatial_gate = (None if opts.no_spatial
                             else SpatialGate(opts.spatial_kernel, opts.spatial_padding, opts.spatial_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.channel_gate(x)
        if self.spatial_gate is not None:
            out = self.spatial_gate(out)
        return out
