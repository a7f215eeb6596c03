"""Attentional feature fusion (MS-CAM, DAF, AFF, iAFF), PyTorch twin of paddle_impl/blocks/attentional_fusion.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.attentional_fusion import (AttentionalFusionOptions, DirectAddFusionOptions,
                                                  IterativeAttentionalFusionOptions, MSCAMOptions, splits_pair)
from torch_impl.layers import batch_norm


class MSCAM(nn.Module):
    """Multi-scale channel attention applied to its own input: x * M(x)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.options = opts = MSCAMOptions(channels=channels, reduction=reduction)
        self.local_att = _bottleneck(opts)
        self.global_att = _bottleneck(opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * channel_attention(self.local_att, self.global_att, x)


class DirectAddFusion(nn.Module):
    """x + residual: the parameter-free baseline of the fusion family."""

    def __init__(self, channels: int, paired_input: bool = False) -> None:
        super().__init__()
        self.options = DirectAddFusionOptions(channels=channels, paired_input=paired_input)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x, residual = _pair(x, residual, self.options.channels, self.options.paired_input)
        return x + residual


class AttentionalFusion(nn.Module):
    """AFF: one MS-CAM on x + residual decides, per channel and position, how much of each to keep."""

    def __init__(self, channels: int, reduction: int = 4, paired_input: bool = False,
                 fusion_scale: float = 2.0) -> None:
        super().__init__()
        self.options = opts = AttentionalFusionOptions(channels=channels, reduction=reduction,
                                                       paired_input=paired_input, fusion_scale=fusion_scale)
        self.local_att = _bottleneck(opts)
        self.global_att = _bottleneck(opts)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        opts = self.options
        x, residual = _pair(x, residual, opts.channels, opts.paired_input)
        weight = channel_attention(self.local_att, self.global_att, x + residual)
        return opts.fusion_scale * x * weight + opts.fusion_scale * residual * (1 - weight)


class IterativeAttentionalFusion(nn.Module):
    """iAFF: a first attentional fusion gives the input from which a second MS-CAM weighs x against residual."""

    def __init__(self, channels: int, reduction: int = 4, paired_input: bool = False,
                 reuse_global: bool = False) -> None:
        super().__init__()
        self.options = opts = IterativeAttentionalFusionOptions(
            channels=channels, reduction=reduction, paired_input=paired_input, reuse_global=reuse_global)
        self.local_att = _bottleneck(opts)
        self.global_att = _bottleneck(opts)
        self.local_att2 = _bottleneck(opts)
        self.global_att2 = None if opts.reuse_global else _bottleneck(opts)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        opts = self.options
        x, residual = _pair(x, residual, opts.channels, opts.paired_input)
        weight = channel_attention(self.local_att, self.global_att, x + residual)
        initial = x * weight + residual * (1 - weight)
        global_att2 = self.global_att if opts.reuse_global else self.global_att2
        weight2 = channel_attention(self.local_att2, global_att2, initial)
        return x * weight2 + residual * (1 - weight2)


def channel_attention(local_att: nn.Module, global_att: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """M(x) = sigmoid(L(x) + G(GAP(x))); G's (N, C, 1, 1) output broadcasts over every position."""
    return torch.sigmoid(local_att(x) + global_att(x.mean(dim=(2, 3), keepdim=True)))


def _bottleneck(opts: MSCAMOptions) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(opts.channels, opts.inter_channels, kernel_size=1, bias=False),
                         batch_norm(2, opts.inter_channels),
                         nn.ReLU(),
                         nn.Conv2d(opts.inter_channels, opts.channels, kernel_size=1, bias=False),
                         batch_norm(2, opts.channels))


def _pair(x: torch.Tensor, residual: torch.Tensor | None, channels: int,
          paired_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if splits_pair(paired_input, residual is not None):
        return x[:, :channels], x[:, channels:]
    return x, residual
