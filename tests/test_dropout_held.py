"""Dropout in a user's pair: held off (identity) in train-mode steps in both frameworks, its rate compared."""

from __future__ import annotations

import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.model_pair import ModelPair


class TorchNet(torch.nn.Module):
    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(12, 16), torch.nn.Dropout(rate), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class PaddleNet(paddle.nn.Layer):
    def __init__(self, rate: float | None = 0.5) -> None:
        super().__init__()
        self.fc1, self.fc2 = paddle.nn.Linear(12, 16), paddle.nn.Linear(16, 4)
        self.drop = paddle.nn.Dropout(rate) if rate is not None else paddle.nn.Identity()

    def forward(self, x):
        return self.fc2(self.drop(paddle.nn.functional.relu(self.fc1(x))))


def _cases(paddle_rate, dtype="float64"):
    pair = ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:PaddleNet",
                                    {"torch": {}, "paddle": {"rate": paddle_rate}}, input_shape=(4, 12))
    return check_spec(pair, modes=("train",), dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_with_dropout_passes_in_train_mode(dtype):
    cases = _cases(0.5, dtype)
    assert len(cases) == 2 and all(c.passed for c in cases)
    assert any("dropout held off (run as at inference" in note for note in cases[0].notes)
    assert [c.tensor for c in cases[0].comparisons if c.category == "dropout"] == ["drop.p"]


@pytest.mark.parametrize("paddle_rate, said", [(0.3, "rate 0.3 vs reference 0.5"), (None, "dropout in torch only")])
def test_a_different_rate_or_a_missing_dropout_fails(paddle_rate, said):
    first = _cases(paddle_rate)[0]  # torch -> paddle
    assert [(c.tensor, c.passed) for c in first.failures] == [("drop.p", False)]
    assert said in first.failures[0].note


class PaddleNamedOtherwise(paddle.nn.Layer):
    """The same model with its layers registered under other names (a structural `--name-map auto` pairs the
    linear layers, which hold tensors; the dropout layers hold none)."""

    def __init__(self, rates: tuple[float, ...] = (0.5,)) -> None:
        super().__init__()
        self.dense_in, self.dense_out = paddle.nn.Linear(12, 16), paddle.nn.Linear(16, 4)
        self.dropouts = paddle.nn.LayerList([paddle.nn.Dropout(rate) for rate in rates])

    def forward(self, x):
        x = paddle.nn.functional.relu(self.dense_in(x))
        for dropout in self.dropouts:
            x = dropout(x)
        return self.dense_out(x)


def _renamed_cases(rates):
    pair = ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:PaddleNamedOtherwise",
                                    {"torch": {}, "paddle": {"rates": rates}}, input_shape=(4, 12), name_map="auto")
    return check_spec(pair, modes=("train",))


def test_dropout_layers_a_structural_map_cannot_name_are_matched_in_order():
    cases = _renamed_cases((0.5,))
    assert len(cases) == 2 and all(c.passed for c in cases), [c.failures for c in cases]
    assert any("matched in the order the models register or call them: `drop` -> `dropouts.0`" in n for n in cases[0].notes)


@pytest.mark.parametrize("rates, said", [((0.4,), "rate 0.4 vs reference 0.5"),
                                         ((0.5, 0.5), "dropout in paddle only")])
def test_renamed_dropout_of_another_rate_or_count_fails(rates, said):
    first = _renamed_cases(rates)[0]  # torch -> paddle
    assert not first.passed and any(said in c.note for c in first.failures), first.failures


class TorchAttention(torch.nn.Module):
    def __init__(self, rate: float = 0.1) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, dropout=rate, batch_first=True)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


class PaddleAttention(paddle.nn.Layer):
    def __init__(self, rate: float = 0.1) -> None:
        super().__init__()
        self.attn = paddle.nn.MultiHeadAttention(8, 2, dropout=rate)
        self.fc = paddle.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x))


@pytest.mark.parametrize("paddle_rate, passes", [(0.1, True), (0.0, False)])
def test_an_attention_layers_own_dropout_is_held_off_and_its_rate_compared(paddle_rate, passes):
    pair = ModelPair.from_factories(f"{__name__}:TorchAttention", f"{__name__}:PaddleAttention",
                                    {"torch": {}, "paddle": {"rate": paddle_rate}}, input_shape=(2, 5, 8),
                                    name_map="auto")
    first = check_spec(pair, modes=("train",))[0]
    assert first.passed is passes, first.failures
    rows = [c for c in first.comparisons if c.category == "dropout"]
    assert [c.tensor for c in rows] == ["attn.p"] and rows[0].passed is passes


def test_a_layer_paddle_cannot_build_lazily_is_built_for_real():
    """paddle 3.3.1 builds no LSTM under LazyGuard; the pair still reads its slots."""
    pair = ModelPair.from_factories(f"{__name__}:TorchNet", "paddle.nn:LSTM",
                                    {"torch": {}, "paddle": {"input_size": 6, "hidden_size": 8}}, input_shape=(2, 5, 6))
    assert any(key.endswith("weight_ih_l0") for key in pair.slots("paddle"))
