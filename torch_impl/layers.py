"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the torch side."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_TORCH, LN_EPSILON
from crossattn.conventions import as_paddle_holds
from crossattn.resample import adaptive_pool_matrix, bilinear_matrix

ZERO_INIT_ATTR = "crossattn_zero_init"


def conv_nd(dimension: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dimension]


def max_pool_nd(dimension: int, kernel: tuple[int, ...]) -> nn.Module:
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dimension]
    return cls(kernel_size=kernel, stride=kernel)


def batch_norm(dimension: int, channels: int) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dimension]
    return cls(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM_TORCH)


def layer_norm(shape: list[int], epsilon: float = LN_EPSILON) -> nn.Module:
    return nn.LayerNorm(shape, eps=as_paddle_holds(epsilon))


def zero_init_layer(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias, and mark it so numpy initialisation keeps it zero."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if param is not None:
                param.zero_()
    setattr(module, ZERO_INIT_ATTR, True)
    return module


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis, kept as size 1: any input size works.

    A mean rather than an adaptive pooling layer: paddle's adaptive average
    pooling scales its gradient by 1/N held in float32.
    """
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def resample_2d(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """rows @ x @ cols^T over the two spatial axes: a float64-built linear map (crossattn.resample)."""
    rows_t = torch.tensor(rows, dtype=x.dtype, device=x.device)
    cols_t = torch.tensor(cols, dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(rows_t, x), cols_t.transpose(0, 1))


def adaptive_avg_pool_2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling to size x size, torch's bins, exact gradient in both frameworks."""
    return resample_2d(x, adaptive_pool_matrix(x.shape[2], size), adaptive_pool_matrix(x.shape[3], size))


def bilinear_resize(x: torch.Tensor, height: int, width: int, align_corners: bool) -> torch.Tensor:
    """Bilinear resize with torch's coordinate rules, exact in float64 in both frameworks."""
    return resample_2d(x, bilinear_matrix(x.shape[2], height, align_corners),
                       bilinear_matrix(x.shape[3], width, align_corners))
