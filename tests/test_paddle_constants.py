"""Constants paddle applies in float32 (ELU alpha, Hardtanh bounds, Softshrink lambda, pow exponent, hardsigmoid
slope, a functional norm's epsilon): an equal pair passes in both dtypes because torch is given the same float32
values, a different one fails."""

from __future__ import annotations

import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for
from torch_impl import comparison_calls


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ELU(0.7)
        self.clip = torch.nn.Hardtanh(-0.3, 0.3)
        self.gate = torch.nn.Hardsigmoid()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.act(self.conv(x))
        y = self.clip(y) + torch.nn.functional.softshrink(y, 0.3) + y.abs() ** 0.7
        y = y + torch.nn.functional.layer_norm(y * 1e-3, [8, 8, 8], eps=1e-5)  # a variance far below eps
        return self.fc((y * self.gate(y * 4)).mean((2, 3)))


class PaddleNet(paddle.nn.Layer):
    def __init__(self, alpha: float = 0.7, slope: float = 1 / 6) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.fc = paddle.nn.Linear(8, 4)
        self.alpha, self.slope = alpha, slope

    def forward(self, x):
        F = paddle.nn.functional
        y = F.elu(self.conv(x), self.alpha)
        y = F.hardtanh(y, -0.3, 0.3) + F.softshrink(y, 0.3) + y.abs() ** 0.7
        y = y + F.layer_norm(y * 1e-3, [8, 8, 8], epsilon=1e-5)
        return self.fc((y * F.hardsigmoid(y * 4, slope=self.slope, offset=0.5)).mean((2, 3)))


def _pair(**paddle_args) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:PaddleNet",
                                    {"torch": {}, "paddle": paddle_args}, input_shape=(2, 3, 8, 8))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_passes_and_says_which_constants_were_rounded(dtype):
    cases = check_spec(_pair(), dtype=dtype, tol=tolerance_for(dtype))
    assert len(cases) == 5 and all(c.passed for c in cases), [c.worst for c in cases]
    notes = " ".join(cases[0].notes)
    for said in ("elu alpha 0.7 -> 0.699999988", "hardtanh min_val -0.3", "softshrink lambd 0.3",
                 "pow exponent 0.7", "hardsigmoid slope 1/6", "layer_norm eps 1e-05 -> 9.99999975e-06"):
        assert said in notes


def test_torchs_own_constants_fail_the_float64_check(monkeypatch):
    monkeypatch.setattr(comparison_calls, "HELD_CALLS", frozenset())
    cases = check_spec(_pair(), modes=("eval",), probes=())
    assert not any(c.passed for c in cases)
    assert all(c.worst.norm_rel < 1e-7 for c in cases)  # differences of float32 constants, nothing more


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("paddle_args", [{"alpha": 0.71}, {"slope": 0.1666667}], ids=["elu_alpha", "paddle_slope"])
def test_a_different_constant_fails(dtype, paddle_args):
    """A wrong alpha, and paddle's default hardsigmoid slope (0.1666667, two float32 steps from 1/6)."""
    cases = check_spec(_pair(**paddle_args), dtype=dtype, tol=tolerance_for(dtype), modes=("eval",), probes=())
    assert cases and not any(c.passed for c in cases)


class TorchSelu(torch.nn.Module):
    """SELU as a layer, as a function and in place: the three ways torch calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.SELU()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.nn.functional.selu(self.act(self.conv(x)) * 2.0 - 0.5)
        y = torch.nn.functional.selu(y - 0.25, inplace=True)
        return self.fc(y.mean((2, 3)))


class PaddleSelu(paddle.nn.Layer):
    def __init__(self, alpha: float = 1.6732632423543772848170429916717) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.act = paddle.nn.SELU(alpha=alpha)
        self.fc = paddle.nn.Linear(8, 4)

    def forward(self, x):
        F = paddle.nn.functional
        y = F.selu(self.act(self.conv(x)) * 2.0 - 0.5)
        y = F.selu(y - 0.25)
        return self.fc(y.mean((2, 3)))


def _selu_pair(**paddle_args) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchSelu", f"{__name__}:PaddleSelu",
                                    {"torch": {}, "paddle": paddle_args}, input_shape=(2, 3, 8, 8))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_selu_pair_passes_with_paddles_kernel_given_to_torch(dtype):
    cases = check_spec(_selu_pair(), dtype=dtype, tol=tolerance_for(dtype))
    assert len(cases) == 6 and all(c.passed for c in cases), [c.worst for c in cases]
    assert "selu: paddle's float32 scale and alpha, and its backward" in " ".join(cases[0].notes)


def test_torchs_own_selu_fails_the_float64_check(monkeypatch):
    """Without the rewrite the equal pair differs by paddle's float32 constants and its backward's form."""
    monkeypatch.setattr(comparison_calls, "HELD_CALLS", frozenset())
    cases = check_spec(_selu_pair(), modes=("eval",), probes=())
    assert not any(c.passed for c in cases)
    assert all(c.worst.norm_rel < 1e-6 for c in cases)


def test_paddles_selu_backward_is_what_torch_is_given():
    """The rewrite reproduces paddle's float64 SELU forward and backward bit for bit on both branches."""
    import numpy as np

    from torch_impl.paddle_constants import _PaddleSelu

    values = np.array([-5.0, -0.3, -1e-7, -1e-30, 0.0, 1e-30, 0.4, 3.0])
    x = paddle.to_tensor(values, stop_gradient=False)
    out = paddle.nn.functional.selu(x)
    out.backward(paddle.ones_like(out))
    t = torch.tensor(values, requires_grad=True)
    ours = _PaddleSelu.apply(t)
    ours.backward(torch.ones_like(ours))
    assert np.array_equal(ours.detach().numpy(), out.numpy())
    assert np.array_equal(t.grad.numpy(), x.grad.numpy())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_different_selu_alpha_fails(dtype):
    cases = check_spec(_selu_pair(alpha=1.67), dtype=dtype, tol=tolerance_for(dtype), modes=("eval",), probes=())
    assert cases and not any(c.passed for c in cases)
