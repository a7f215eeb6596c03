"""Random tensors drawn in a forward take one stream's values in both frameworks: a hand-written DropPath pair
compares as one function in train mode, and a DropPath that scales or drops differently still fails."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.dropout_calls import DropoutCalls
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for
from paddle_impl.functional_dropout import held_dropout_calls
from torch_impl.comparison_calls import comparison_calls

#: (torch draw, paddle draw) of the same values
DRAWS = {
    "rand": (lambda: torch.rand(3, 4, dtype=torch.float64), lambda: paddle.rand([3, 4], dtype="float64")),
    "randn_like": (lambda: torch.randn_like(torch.zeros(5)), lambda: paddle.randn_like(paddle.zeros([5]))),
    "uniform_": (lambda: torch.empty(6).uniform_(-2, 3), lambda: paddle.empty([6]).uniform_(-2, 3)),
    "normal_": (lambda: torch.empty(6).normal_(1.0, 0.5), lambda: paddle.empty([6]).normal_(1.0, 0.5)),
    "bernoulli_": (lambda: torch.empty(8, 1, 1, 1).bernoulli_(0.7), lambda: paddle.empty([8, 1, 1, 1]).bernoulli_(0.7)),
    "bernoulli_as_floor": (lambda: torch.empty(8, dtype=torch.float64).bernoulli_(0.7),
                           lambda: paddle.floor(0.7 + paddle.rand([8], dtype="float64"))),
    "bernoulli_of_probabilities": (lambda: torch.bernoulli(torch.full((8,), 0.3)),
                                   lambda: paddle.bernoulli(paddle.full([8], 0.3))),
}


@pytest.mark.parametrize("name", list(DRAWS))
def test_both_frameworks_draw_the_same_values(name):
    torch_draw, paddle_draw = DRAWS[name]
    with comparison_calls(dropouts=(torch_calls := DropoutCalls())):
        ours = torch_draw().numpy()
    with held_dropout_calls(paddle_calls := DropoutCalls()):
        theirs = paddle_draw().numpy()
    assert np.array_equal(ours, theirs) and len(torch_calls.draws) == len(paddle_calls.draws) == 1
    assert not np.all(ours == ours.flat[0])  # a real draw, not a constant


def test_outside_a_step_draws_are_the_frameworks_own():
    assert not np.array_equal(torch.rand(16, dtype=torch.float64).numpy(), torch.rand(16, dtype=torch.float64).numpy())


class TorchDropPath(torch.nn.Module):
    """timm's DropPath: a per-sample keep mask drawn with `bernoulli_`, scaled by 1 / keep."""

    def __init__(self, drop: float = 0.5) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)
        self.keep = 1.0 - drop

    def forward(self, x):
        x = self.conv(x)
        y = self.branch(x)
        if self.training:
            mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(self.keep)
            y = y * mask / self.keep
        return self.fc((x + y).mean((2, 3)))


class PaddleDropPath(paddle.nn.Layer):
    """The PaddleClas form: floor(keep + rand), scaled by 1 / keep (or, as a planted bug, by keep)."""

    def __init__(self, drop: float = 0.5, scale_by_keep: bool = False) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.branch = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.fc = paddle.nn.Linear(8, 4)
        self.keep, self.scale_by_keep = 1.0 - drop, scale_by_keep

    def forward(self, x):
        x = self.conv(x)
        y = self.branch(x)
        if self.training:
            mask = paddle.floor(self.keep + paddle.rand([x.shape[0], 1, 1, 1], dtype=x.dtype))
            y = y * mask * self.keep if self.scale_by_keep else y * mask / self.keep
        return self.fc((x + y).mean((2, 3)))


def _pair(**paddle_args) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchDropPath", f"{__name__}:PaddleDropPath",
                                    {"torch": {}, "paddle": paddle_args}, input_shape=(8, 3, 6, 6))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_drop_path_pair_passes_in_train_mode(dtype):
    cases = check_spec(_pair(), dtype=dtype, tol=tolerance_for(dtype))
    assert len(cases) == 6 and all(c.passed for c in cases), [c.worst for c in cases]
    train = [c for c in cases if c.mode == "train"]
    assert all(any("took the values of one stream both frameworks share" in n for n in c.notes) for c in train)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("paddle_args", [{"scale_by_keep": True}, {"drop": 0.25}], ids=["scale", "rate"])
def test_a_drop_path_that_differs_fails_in_train_mode(dtype, paddle_args):
    cases = check_spec(_pair(**paddle_args), dtype=dtype, tol=tolerance_for(dtype), probes=())
    assert all(c.passed == (c.mode == "eval") for c in cases), [(c.mode, c.passed) for c in cases]
