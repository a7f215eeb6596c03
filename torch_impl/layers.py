"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the torch side."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_TORCH, LN_EPSILON

ZERO_INIT_ATTR = "crossattn_zero_init"


def conv_nd(dimension: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dimension]


def max_pool_nd(dimension: int, kernel: tuple[int, ...]) -> nn.Module:
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dimension]
    return cls(kernel_size=kernel, stride=kernel)


def batch_norm(dimension: int, channels: int) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dimension]
    return cls(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM_TORCH)


def layer_norm(shape: list[int]) -> nn.Module:
    return nn.LayerNorm(shape, eps=LN_EPSILON)


def zero_init_layer(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias, and mark it so numpy initialisation keeps it zero."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if param is not None:
                param.zero_()
    setattr(module, ZERO_INIT_ATTR, True)
    return module
