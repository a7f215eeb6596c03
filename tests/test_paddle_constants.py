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
