"""Layer factories that apply crossattn's conventions (BN momentum, epsilons) on the paddle side."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from crossattn.conventions import BN_EPSILON, BN_MOMENTUM_PADDLE, BN_STATS_RULES, LN_EPSILON, bn_stats_update
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


class _SharedStatsBatchNorm:
    """BatchNorm whose running statistics follow a shared rule (conventions.bn_stats_update).

    The output, its gradient and the batch statistics come from paddle's own
    kernel; only the fold into the running estimates is replaced.
    """

    crossattn_bn_stats = "torch"

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.training or self._use_global_stats:
            return super().forward(x)
        self._check_data_format(self._data_format)
        self._check_input_dim(x)
        # momentum 0 makes the kernel hand back this batch's statistics (mean, biased variance): no extra pass
        mean, var = paddle.zeros_like(self._mean), paddle.zeros_like(self._variance)
        out = F.batch_norm(x, mean, var, weight=self.weight, bias=self.bias, training=True, momentum=0.0,
                           epsilon=self._epsilon, data_format=self._data_format, use_global_stats=False)
        with paddle.no_grad():
            channel_axis = 1 if self._data_format.startswith("NC") else x.ndim - 1
            count = int(np.prod(x.shape)) // int(x.shape[channel_axis])
            keep, new, unbiased = bn_stats_update(self.crossattn_bn_stats, 1.0 - self._momentum)
            if unbiased:
                var = var * (count / max(count - 1, 1))
            paddle.assign(keep * self._mean + new * mean, output=self._mean)
            paddle.assign(keep * self._variance + new * var, output=self._variance)
        return out


_SHARED_CLASSES: dict[type, type] = {}


def apply_bn_stats(model: nn.Layer, rule: str) -> nn.Layer:
    """Make every BatchNorm of `model` fold its running statistics by `rule` (torch, paddle or native).

    paddle's layers already follow `paddle` and `native`; under `torch` each
    BatchNorm (a spec's twin or a user's own) is given the shared update, its
    parameters and buffers untouched.
    """
    if rule not in BN_STATS_RULES:
        raise ValueError(f"bn_stats {rule!r}: expected one of {', '.join(BN_STATS_RULES)}")
    for _, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            base = type(layer)
            if isinstance(layer, _SharedStatsBatchNorm):
                base = base.__mro__[2]
            if rule in ("paddle", "native"):
                layer.__class__ = base
                continue
            if base not in _SHARED_CLASSES:
                _SHARED_CLASSES[base] = type(base.__name__, (_SharedStatsBatchNorm, base), {})
            layer.__class__ = _SHARED_CLASSES[base]
    return model


def layer_norm(shape: list[int], epsilon: float = LN_EPSILON) -> nn.Layer:
    return nn.LayerNorm(shape, epsilon=as_paddle_holds(epsilon))


def zero_init_layer(layer: nn.Layer) -> nn.Layer:
    """Zero a layer's weight and bias, and mark it so numpy initialisation keeps it zero.

    Under LazyGuard a parameter has no value to set (as torch's meta tensors have
    none to zero): a lazily built model gets every value from its state.
    """
    from paddle.nn.initializer.lazy_init import lazy_init_helper

    for name in ("weight", "bias"):
        param = getattr(layer, name, None)
        if param is not None and not lazy_init_helper().state:
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


@functools.cache
def group_norm_without_affine_is_wrong() -> bool:
    """Whether this paddle's group_norm without weight and bias returns a wrong input gradient.

    paddle 3.3.1's does (0.23 off finite differences on a random 2x8x4x4
    input, where torch's and paddle's own with a weight of ones agree with
    them to 6e-9). Probed, not assumed from the version: a fixed release
    stops being named.
    """
    values = np.random.default_rng(0).standard_normal((1, 4, 2, 2))
    cotangent = paddle.to_tensor(np.random.default_rng(1).standard_normal((1, 4, 2, 2)))
    grads = []
    for weight, bias in ((None, None), (paddle.ones([4], "float64"), paddle.zeros([4], "float64"))):
        x = paddle.to_tensor(values, stop_gradient=False)
        (F.group_norm(x, 2, epsilon=1e-5, weight=weight, bias=bias) * cotangent).sum().backward()
        grads.append(x.grad.numpy())
    return not np.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@functools.cache
def log_softmax_floor() -> float | None:
    """The value this paddle's log_softmax clips its output at, if it does (paddle 3.3.1: -64, in both dtypes;
    the true value of the probe is -100)."""
    out = F.log_softmax(paddle.to_tensor(np.array([[0.0, -100.0]])), axis=1).numpy()[0, 1]
    return float(out) if out > -99.0 else None


@functools.cache
def celu_float32_overflows() -> bool:
    """Whether this paddle's float32 CELU backward is NaN for large inputs (paddle 3.3.1: from x / alpha > 88,
    where its gradient is 1; float64 and ELU are right)."""
    x = paddle.to_tensor(np.array([100.0], dtype=np.float32), stop_gradient=False)
    F.celu(x, 1.0).backward()
    return not bool(np.isfinite(x.grad.numpy()).all())


def known_defects(model: nn.Layer) -> list[str]:
    """Notes on layers of `model` whose paddle kernels are known to compute something else than they should."""
    layers = list(model.named_sublayers(include_self=True))

    def named(kind: type, where: Callable[[nn.Layer], bool] = lambda layer: True) -> list[str]:
        return [name or "the model" for name, layer in layers if isinstance(layer, kind) and where(layer)]

    notes = []
    plain = named(nn.GroupNorm, lambda layer: layer.weight is None)
    if plain and group_norm_without_affine_is_wrong():
        notes.append(f"paddle {paddle.__version__}'s GroupNorm without weight and bias returns a wrong input "
                     f"gradient (its own GroupNorm with a weight of ones and a bias of zeros does not): {len(plain)} "
                     f"layer(s), e.g. `{plain[0]}`; the gradients that flow through them differ from torch's, which "
                     f"match finite differences. To port such a layer, give the paddle GroupNorm a weight and a bias "
                     f"(torch: affine=True), or fix them at one and zero")
    log_softmax = named(nn.LogSoftmax)
    if log_softmax and log_softmax_floor() is not None:
        notes.append(f"paddle {paddle.__version__}'s log_softmax clips its output at {log_softmax_floor():g} "
                     f"({len(log_softmax)} layer(s), e.g. `{log_softmax[0]}`): where a class's log-probability is "
                     f"lower (logits {-log_softmax_floor():g} apart, as the large probe makes them) torch's value "
                     f"and paddle's differ, and the check fails there, correctly")
    hardsigmoid = named(nn.Hardsigmoid)
    if hardsigmoid:
        notes.append(f"paddle's nn.Hardsigmoid computes x * 0.1666667 + 0.5 (F.hardsigmoid's default slope), not "
                     f"torch's x / 6 + 1 / 2 ({len(hardsigmoid)} layer(s), e.g. `{hardsigmoid[0]}`): the slopes are "
                     f"3.3e-8 apart, a real difference check fails on (about 3e-8 of scale); to port torch's, call "
                     f"F.hardsigmoid(x, slope=1 / 6) in paddle, which agrees with it")
    celu = named(nn.CELU)
    if celu and celu_float32_overflows():
        notes.append(f"paddle {paddle.__version__}'s float32 CELU backward is NaN where x / alpha exceeds about 88 "
                     f"({len(celu)} layer(s), e.g. `{celu[0]}`; its float64 one and ELU's are right): a float32 "
                     f"check whose large probe reaches there fails with non-finite gradients, correctly")
    return notes
