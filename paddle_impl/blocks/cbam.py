"""Convolutional block attention module, PaddlePaddle twin of torch_impl/blocks/cbam.py.

Maxima are taken with amax in both twins: on ties (a ReLU'd input has many) torch.max(dim)
sends the whole gradient to one element and paddle.max splits it evenly; amax splits it in both.
"""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.nn import functional as F

from crossattn.blocks.cbam import CBAMOptions
from paddle_impl.layers import global_avg_pool


class ChannelGate(nn.Layer):
    """x * sigmoid(MLP(spatial mean) + MLP(spatial max)); the MLP's weights are shared by both descriptors."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        logits = self._mlp(global_avg_pool(x).flatten(1)) + self._mlp(paddle.amax(x, axis=(2, 3)))
        return x * F.sigmoid(logits).reshape([x.shape[0], x.shape[1], 1, 1])

    def _mlp(self, descriptor: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(F.relu(self.fc1(descriptor)))


class SpatialGate(nn.Layer):
    """x * sigmoid(conv([mean over channels; max over channels])), one weight per position."""

    def __init__(self, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2D(2, 1, kernel_size=kernel_size, padding=padding, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        pooled = paddle.concat([x.mean(axis=1, keepdim=True), paddle.amax(x, axis=1, keepdim=True)], axis=1)
        return x * F.sigmoid(self.conv(pooled))


class CBAMBlock(nn.Layer):
    """Channel gate, then (unless no_spatial) spatial gate, applied in sequence."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, no_spatial: bool = False) -> None:
        super().__init__()
        self.options = opts = CBAMOptions(channels=channels, reduction=reduction, spatial_kernel=spatial_kernel,
                                          no_spatial=no_spatial)
        self.channel_gate = ChannelGate(opts.channels, opts.hidden)
        self.spatial_gate = None if opts.no_spatial else SpatialGate(opts.spatial_kernel, opts.spatial_padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.channel_gate(x)
        if self.spatial_gate is not None:
            out = self.spatial_gate(out)
        return out
