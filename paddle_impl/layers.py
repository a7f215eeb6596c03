"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the paddle side."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_PADDLE, LN_EPSILON

ZERO_INIT_ATTR = "crossattn_zero_init"


def conv_nd(dimension: int) -> type[nn.Layer]:
    return {1: nn.Conv1D, 2: nn.Conv2D, 3: nn.Conv3D}[dimension]


def max_pool_nd(dimension: int, kernel: tuple[int, ...]) -> nn.Layer:
    cls = {1: nn.MaxPool1D, 2: nn.MaxPool2D, 3: nn.MaxPool3D}[dimension]
    return cls(kernel_size=list(kernel), stride=list(kernel))


def batch_norm(dimension: int, channels: int) -> nn.Layer:
    cls = {1: nn.BatchNorm1D, 2: nn.BatchNorm2D, 3: nn.BatchNorm3D}[dimension]
    return cls(channels, epsilon=BN_EPSILON, momentum=BN_MOMENTUM_PADDLE)


def layer_norm(shape: list[int]) -> nn.Layer:
    return nn.LayerNorm(shape, epsilon=LN_EPSILON)


def zero_init_layer(layer: nn.Layer) -> nn.Layer:
    """Zero a layer's weight and bias, and mark it so numpy initialisation keeps it zero."""
    for name in ("weight", "bias"):
        param = getattr(layer, name, None)
        if param is not None:
            param.set_value(paddle.zeros_like(param))
    setattr(layer, ZERO_INIT_ATTR, True)
    return layer
