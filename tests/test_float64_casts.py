"""A model's own cast to float32 (`attn.float().softmax(-1).type_as(x)`) is kept in float64 in a float64 step: at the
float32 users run it does nothing, and in float64 it rounded one side only, so an equal pair failed both dtypes."""

from __future__ import annotations

import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.diff import diff_spec
from crossattn.model_pair import ModelPair


class TorchAttention(torch.nn.Module):
    def __init__(self, cast: str = "float") -> None:
        super().__init__()
        self.q, self.k = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.cast = cast

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) * 8 ** -0.5
        scores = {"float": scores.float(), "to": scores.to(torch.float32), "none": scores,
                  "half": scores.half()}[self.cast]
        return scores.softmax(-1).type_as(x) @ x


class PaddleAttention(paddle.nn.Layer):
    def __init__(self, cast: bool = False) -> None:
        super().__init__()
        self.q, self.k = paddle.nn.Linear(8, 8), paddle.nn.Linear(8, 8)
        self.cast = cast

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose([0, 2, 1]) * 8 ** -0.5
        if self.cast:
            scores = scores.astype("float32")
        return paddle.nn.functional.softmax(scores, -1).astype(x.dtype) @ x


def _pair(torch_cast: str = "float", paddle_cast: bool = False) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchAttention", f"{__name__}:PaddleAttention",
                                    {"torch": {"cast": torch_cast}, "paddle": {"cast": paddle_cast}},
                                    input_shape=(2, 6, 8))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("torch_cast, paddle_cast", [("float", False), ("to", False), ("none", True),
                                                     ("float", True)])
def test_a_cast_to_float32_on_either_side_passes(torch_cast, paddle_cast, dtype):
    cases = check_spec(_pair(torch_cast, paddle_cast), dtype=dtype)
    assert all(c.passed for c in cases), [c.failures for c in cases if not c.passed]
    assert any("casts of float64 tensors to float32 kept in float64" in n and "in forward" in n
               for n in cases[0].notes), cases[0].notes


def test_a_cast_to_float16_still_fails():
    """Only float32 casts are kept: float16 arithmetic is a difference at the dtype users run."""
    cases = check_spec(_pair("half"), dtype="float32")
    assert not all(c.passed for c in cases)


def test_diff_keeps_the_cast_too():
    report = diff_spec(_pair("float"))
    assert report.passed and any("kept in float64" in n for n in report.rounding), report.rounding
