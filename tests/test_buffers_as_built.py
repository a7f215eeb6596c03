"""A pair's own buffers (a relative-position index, an attention mask) are compared as each factory builds them:
the check runs both models with the source's drawn state, so a wrong persistent buffer on one side passed."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for

N = 4  # tokens per sample


def _index(offset: int) -> np.ndarray:
    """Each pair of tokens' entry in a table of 2N - 1 relative positions (offset N - 1 is the right one)."""
    rows, cols = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    return (rows - cols + offset) % (2 * N - 1)


def _mask(blocked: float) -> np.ndarray:
    return np.triu(np.full((N, N), blocked), 1)


class TorchBiased(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.table = torch.nn.Parameter(torch.zeros(2 * N - 1))
        self.register_buffer("index", torch.from_numpy(_index(N - 1)))
        self.register_buffer("mask", torch.from_numpy(_mask(-100.0)).float())

    def forward(self, x):  # x: [B, N, 8], normalised so that the large probe does not saturate the softmax
        x = x / x.norm(dim=-1, keepdim=True)
        q = self.proj(x)
        scores = q @ x.transpose(1, 2) + self.table[self.index] + self.mask
        return scores.softmax(-1) @ x


class PaddleBiased(paddle.nn.Layer):
    def __init__(self, offset: int = N - 1, blocked: float = -100.0) -> None:
        super().__init__()
        self.proj = paddle.nn.Linear(8, 8)
        self.table = self.create_parameter([2 * N - 1], default_initializer=paddle.nn.initializer.Constant(0.0))
        self.register_buffer("index", paddle.to_tensor(_index(offset)))
        self.register_buffer("mask", paddle.to_tensor(_mask(blocked), dtype="float32"))

    def forward(self, x):
        x = x / x.norm(axis=-1, keepdim=True)
        q = self.proj(x)
        scores = q @ x.transpose([0, 2, 1]) + self.table[self.index] + self.mask
        return paddle.nn.functional.softmax(scores, -1) @ x


def _pair(**paddle_args) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchBiased", f"{__name__}:PaddleBiased",
                                    {"torch": {}, "paddle": paddle_args}, input_shape=(2, N, 8))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_passes_with_its_buffers_compared(dtype):
    cases = check_spec(_pair(), dtype=dtype, tol=tolerance_for(dtype))
    assert len(cases) == 5 and all(c.passed for c in cases), [c.worst for c in cases]
    rows = {c.tensor for c in cases[0].comparisons if c.tensor.endswith("[as built]")}
    assert rows == {"index [as built]", "mask [as built]"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("paddle_args,wrong", [({"offset": N}, "index [as built]"),
                                               ({"blocked": -10.0}, "mask [as built]")], ids=["index", "mask"])
def test_a_buffer_built_differently_fails_in_both_directions(dtype, paddle_args, wrong):
    cases = check_spec(_pair(**paddle_args), dtype=dtype, tol=tolerance_for(dtype))
    assert cases and not any(c.passed for c in cases)
    for case in cases:
        assert [c.tensor for c in case.failures if c.tensor.endswith("[as built]")] == [wrong]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_diff_names_a_buffer_one_factory_builds_wrong(mode):
    """check failed the pair on its `[as built]` rows; diff, which also runs both models with the source's value,
    said "no layer diverges" and exited 0."""
    from crossattn.diff import diff_spec
    from crossattn.report import diff_table

    wrong = diff_spec(_pair(offset=N), mode=mode)
    assert not wrong.passed
    assert [c.tensor for c in wrong.as_built if not c.passed] == ["index [as built]"]
    text = diff_table(wrong)
    assert "the factories build `index` differently" in text and "no layer diverges" not in text
    assert wrong.to_json()["as_built"][0]["passed"] is False
    right = diff_spec(_pair(), mode=mode)
    assert right.passed and all(c.passed for c in right.as_built) and "no layer diverges" in diff_table(right)
