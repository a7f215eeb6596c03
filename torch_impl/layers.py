"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the torch side."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_TORCH, BN_STATS_RULES, LN_EPSILON, bn_stats_update
from crossattn.conventions import as_paddle_holds
from crossattn.resample import adaptive_pool_matrix, bilinear_matrix

ZERO_INIT_ATTR = "crossattn_zero_init"


def epsilons_as_paddle_holds(model: nn.Module) -> list[tuple[str, float, float]]:
    """Give the model's BatchNorm, InstanceNorm and LayerNorm epsilons the float32 value paddle applies.

    paddle keeps those epsilons as float32 attributes in any dtype (measured:
    1e-5 acts as 9.99999975e-06 in float64; its GroupNorm keeps float64, and is
    left alone). Where a channel's variance is small (a few values per channel
    in a train-mode step) a float64 comparison sees that rounding as a
    difference above 1e-9 between models that are the same. Rounding torch's
    epsilon can hide nothing: paddle cannot hold a value in between. Returns
    (layer, epsilon as built, as used) for each layer changed.
    """
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and isinstance(module.eps, float) and as_paddle_holds(module.eps) != module.eps:
            changed.append((name, module.eps, as_paddle_holds(module.eps)))
            module.eps = as_paddle_holds(module.eps)
    return changed


def conv_nd(dimension: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dimension]


def max_pool_nd(dimension: int, kernel: tuple[int, ...]) -> nn.Module:
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dimension]
    return cls(kernel_size=kernel, stride=kernel)


def batch_norm(dimension: int, channels: int) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dimension]
    return cls(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM_TORCH)


class _SharedStatsBatchNorm:
    """BatchNorm whose running statistics follow a shared rule (conventions.bn_stats_update).

    The output, its gradient and the batch statistics come from torch's own
    kernel; only the fold into the running estimates is replaced.
    """

    crossattn_bn_stats = "paddle"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        self._check_input_dim(x)
        # momentum 1 makes the kernel hand back this batch's statistics (mean, unbiased variance): no extra pass
        mean, var = torch.zeros_like(self.running_mean), torch.zeros_like(self.running_var)
        out = F.batch_norm(x, mean, var, self.weight, self.bias, True, 1.0, self.eps)
        with torch.no_grad():
            count = x.numel() // x.shape[1]
            keep, new, unbiased = bn_stats_update(self.crossattn_bn_stats, self.momentum)
            if not unbiased:
                var = var * ((count - 1) / count)
            self.running_mean.copy_(keep * self.running_mean + new * mean)
            self.running_var.copy_(keep * self.running_var + new * var)
            self.num_batches_tracked.add_(1)
        return out


_SHARED_CLASSES: dict[type, type] = {}


def apply_bn_stats(model: nn.Module, rule: str) -> nn.Module:
    """Make every BatchNorm of `model` fold its running statistics by `rule` (torch, paddle or native).

    torch's layers already follow `torch` and `native`; under `paddle` each
    BatchNorm (a spec's twin or a user's own) is given the shared update, its
    parameters and buffers untouched.
    """
    if rule not in BN_STATS_RULES:
        raise ValueError(f"bn_stats {rule!r}: expected one of {', '.join(BN_STATS_RULES)}")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            base = type(module)
            if isinstance(module, _SharedStatsBatchNorm):
                base = base.__mro__[2]
            if rule in ("torch", "native"):
                module.__class__ = base
                continue
            if base not in _SHARED_CLASSES:
                _SHARED_CLASSES[base] = type(base.__name__, (_SharedStatsBatchNorm, base), {})
            module.__class__ = _SHARED_CLASSES[base]
    return model


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
