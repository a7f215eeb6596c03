"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the paddle side."""

from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_PADDLE, LN_EPSILON
from crossattn.conventions import as_paddle_holds
from crossattn.resample import adaptive_pool_matrix, bilinear_matrix

ZERO_INIT_ATTR = "crossattn_zero_init"


def conv_nd(dimension: int) -> type[nn.Layer]:
    return {1: nn.Conv1D, 2: nn.Conv2D, 3: nn.Conv3D}[dimension]


def max_pool_nd(dimension: int, kernel: tuple[int, ...]) -> nn.Layer:
    cls = {1: nn.MaxPool1D, 2: nn.MaxPool2D, 3: nn.MaxPool3D}[dimension]
    return cls(kernel_size=list(kernel), stride=list(kernel))


def batch_norm(dimension: int, channels: int) -> nn.Layer:
    cls = {1: nn.BatchNorm1D, 2: nn.BatchNorm2D, 3: nn.BatchNorm3D}[dimension]
    return cls(channels, epsilon=BN_EPSILON, momentum=BN_MOMENTUM_PADDLE)


def layer_norm(shape: list[int], epsilon: float = LN_EPSILON) -> nn.Layer:
    return nn.LayerNorm(shape, epsilon=as_paddle_holds(epsilon))


def zero_init_layer(layer: nn.Layer) -> nn.Layer:
    """Zero a layer's weight and bias, and mark it so numpy initialisation keeps it zero."""
    for name in ("weight", "bias"):
        param = getattr(layer, name, None)
        if param is not None:
            param.set_value(paddle.zeros_like(param))
    setattr(layer, ZERO_INIT_ATTR, True)
    return layer


def global_avg_pool(x: paddle.Tensor) -> paddle.Tensor:
    """Mean over every spatial axis, kept as size 1: any input size works.

    A mean rather than an adaptive pooling layer: paddle's adaptive average
    pooling scales its gradient by 1/N held in float32.
    """
    return x.mean(axis=list(range(2, x.ndim)), keepdim=True)


def resample_2d(x: paddle.Tensor, rows: np.ndarray, cols: np.ndarray) -> paddle.Tensor:
    """rows @ x @ cols^T over the two spatial axes: a float64-built linear map (crossattn.resample)."""
    rows_t = paddle.to_tensor(rows, dtype=x.dtype, place=x.place)
    cols_t = paddle.to_tensor(cols, dtype=x.dtype, place=x.place)
    return paddle.matmul(paddle.matmul(rows_t, x), cols_t.transpose([1, 0]))


def adaptive_avg_pool_2d(x: paddle.Tensor, size: int) -> paddle.Tensor:
    """Adaptive average pooling to size x size, torch's bins, exact gradient in both frameworks."""
    return resample_2d(x, adaptive_pool_matrix(x.shape[2], size), adaptive_pool_matrix(x.shape[3], size))


def bilinear_resize(x: paddle.Tensor, height: int, width: int, align_corners: bool) -> paddle.Tensor:
    """Bilinear resize with torch's coordinate rules, exact in float64 in both frameworks."""
    return resample_2d(x, bilinear_matrix(x.shape[2], height, align_corners),
                       bilinear_matrix(x.shape[3], width, align_corners))
