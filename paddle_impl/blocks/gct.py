"""Gated channel transformation, PaddlePaddle twin of torch_impl/blocks/gct.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.blocks.gct import GCTOptions, Mode


class GCTBlock(nn.Layer):
    """y = x * (1 + tanh(embedding * norm + beta)); alpha = 1, gamma = beta = 0 make it the identity at start."""

    def __init__(self, channels: int, mode: Mode = "l2", after_relu: bool = False, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.options = opts = GCTOptions(channels=channels, mode=mode, after_relu=after_relu, epsilon=epsilon)
        self.alpha = self.create_parameter(list(opts.param_shape), default_initializer=nn.initializer.Constant(1.0))
        self.gamma = self.create_parameter(list(opts.param_shape), default_initializer=nn.initializer.Constant(0.0))
        self.beta = self.create_parameter(list(opts.param_shape), default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        opts = self.options
        if opts.mode == "l2":
            embedding = self.alpha * paddle.sqrt((x * x).sum(axis=(2, 3), keepdim=True) + opts.epsilon)
            norm = self.gamma / paddle.sqrt((embedding * embedding).mean(axis=1, keepdim=True) + opts.epsilon)
        else:
            magnitude = x if opts.after_relu else paddle.abs(x)
            embedding = self.alpha * magnitude.sum(axis=(2, 3), keepdim=True)
            norm = self.gamma / (paddle.abs(embedding).mean(axis=1, keepdim=True) + opts.epsilon)
        return x * (1.0 + paddle.tanh(embedding * norm + self.beta))
