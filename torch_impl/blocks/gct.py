"""Gated channel transformation, PyTorch twin of paddle_impl/blocks/gct.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.gct import GCTOptions, Mode


class GCTBlock(nn.Module):
    """y = x * (1 + tanh(embedding * norm + beta)); alpha = 1, gamma = beta = 0 make it the identity at start."""

    def __init__(self, channels: int, mode: Mode = "l2", after_relu: bool = False, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.options = opts = GCTOptions(channels=channels, mode=mode, after_relu=after_relu, epsilon=epsilon)
        self.alpha = nn.Parameter(torch.full(opts.param_shape, 1.0))
        self.gamma = nn.Parameter(torch.full(opts.param_shape, 0.0))
        self.beta = nn.Parameter(torch.full(opts.param_shape, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        if opts.mode == "l2":
            embedding = self.alpha * torch.sqrt((x * x).sum(dim=(2, 3), keepdim=True) + opts.epsilon)
            norm = self.gamma / torch.sqrt((embedding * embedding).mean(dim=1, keepdim=True) + opts.epsilon)
        else:
            magnitude = x if opts.after_relu else torch.abs(x)
            embedding = self.alpha * magnitude.sum(dim=(2, 3), keepdim=True)
            norm = self.gamma / (torch.abs(embedding).mean(dim=1, keepdim=True) + opts.epsilon)
        return x * (1.0 + torch.tanh(embedding * norm + self.beta))
