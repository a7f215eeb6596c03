"""An embedding's padding row: torch returns the row (zero as built, never trained), paddle returns zeros
whatever the row holds. Drawn at random, it failed every equal pair; the check draws it as zeros."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.frameworks import adapter
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for


class TorchTokens(torch.nn.Module):
    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.emb = torch.nn.Embedding(6, 4, padding_idx=padding_idx)

    def forward(self, x):
        index = torch.clamp(torch.floor(x[:, 0] * 2) + 2, 0, 5).long()  # about a sixth of the pixels hit row 0
        return self.stem(x) * self.emb(index).permute(0, 3, 1, 2)


class PaddleTokens(paddle.nn.Layer):
    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.stem = paddle.nn.Conv2D(2, 4, 3, padding=1)
        self.emb = paddle.nn.Embedding(6, 4, padding_idx=padding_idx)

    def forward(self, x):
        index = paddle.clip(paddle.floor(x[:, 0] * 2) + 2, 0, 5).astype("int64")
        return self.stem(x) * self.emb(index).transpose([0, 3, 1, 2])


def _cases(torch_pad, paddle_pad, dtype):
    pair = ModelPair.from_factories(f"{__name__}:TorchTokens", f"{__name__}:PaddleTokens",
                                    {"torch": {"padding_idx": torch_pad}, "paddle": {"padding_idx": paddle_pad}},
                                    input_shape=(2, 2, 6, 6))
    return check_spec(pair, dtype=dtype, tol=tolerance_for(dtype), probes=())


def test_both_adapters_name_the_padding_rows():
    assert adapter("torch").padding_rows(TorchTokens(-1)) == {"emb.weight": 5}
    assert adapter("paddle").padding_rows(PaddleTokens(-1)) == {"emb.weight": 5}
    assert adapter("torch").padding_rows(TorchTokens(None)) == {} == adapter("paddle").padding_rows(PaddleTokens(None))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_with_a_padding_row_passes_and_says_so(dtype):
    cases = _cases(0, 0, dtype)
    assert all(c.passed for c in cases), [c.worst for c in cases]
    assert any("embedding padding rows drawn as zeros" in n for n in cases[0].notes)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("torch_pad, paddle_pad", [(0, None), (None, 0), (0, 1)])
def test_a_padding_index_on_one_side_or_another_row_fails(dtype, torch_pad, paddle_pad):
    cases = _cases(torch_pad, paddle_pad, dtype)
    assert not any(c.passed for c in cases)
    failing = {c.tensor for case in cases for c in case.failures}
    assert "emb.weight.grad" in failing, failing


def test_the_drawn_rows_are_zero_only_at_the_padding_index():
    from crossattn.check import prepare_pair

    pair = ModelPair.from_factories(f"{__name__}:TorchTokens", f"{__name__}:PaddleTokens", input_shape=(2, 2, 6, 6))
    drawn = prepare_pair(pair, "torch->paddle", load=False).src_init["emb.weight"]
    assert np.all(drawn[0] == 0) and np.all(drawn[1:] != 0)
