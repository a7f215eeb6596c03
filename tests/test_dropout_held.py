"""Dropout in a user's pair: plain dropout applied in train-mode steps with a mask both frameworks share, the other
kinds held off (identity); every rate compared."""

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
    assert any("plain dropout applied with the mask of one stream both frameworks share" in note and "`drop`" in note
               for note in cases[0].notes), cases[0].notes
    assert [c.tensor for c in cases[0].comparisons if c.category == "dropout"] == ["drop[dropout].p"]


class PaddleDropoutMoved(paddle.nn.Layer):
    """The planted port: dropout after the second layer instead of before it (the same rate and name)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = paddle.nn.Linear(12, 16), paddle.nn.Dropout(0.5), paddle.nn.Linear(16, 4)

    def forward(self, x):
        return self.drop(self.fc2(paddle.nn.functional.relu(self.fc1(x))))


class PaddleDropoutPastRelu(PaddleNet):
    """Dropout before the ReLU: relu(m x / (1 - p)) = m relu(x) / (1 - p), the same function."""

    def forward(self, x):
        return self.fc2(paddle.nn.functional.relu(self.drop(self.fc1(x))))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("paddle_model, passes", [("PaddleDropoutMoved", False), ("PaddleDropoutPastRelu", True)])
def test_where_a_dropout_sits_is_compared(paddle_model, passes, dtype):
    """Held off on both sides, a dropout moved past a layer passed: masking 16 features or 4 outputs (biases
    included) are different functions in training. Moved past a ReLU it is the same function, and passes."""
    pair = ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:{paddle_model}", {}, input_shape=(4, 12))
    cases = check_spec(pair, modes=("train",), dtype=dtype)
    assert all(c.passed is passes for c in cases), [c.failures for c in cases]
    if not passes:
        assert {"output", "input.grad"} <= {c.tensor for c in cases[0].failures}


@pytest.mark.parametrize("paddle_rate, said", [(0.3, "rate 0.3 vs reference 0.5"), (None, "dropout in torch only")])
def test_a_different_rate_or_a_missing_dropout_fails(paddle_rate, said):
    first = _cases(paddle_rate)[0]  # torch -> paddle
    rows = [c for c in first.failures if c.category == "dropout"]
    assert [c.tensor for c in rows] == ["drop[dropout].p"] and said in rows[0].note
    assert "output" in {c.tensor for c in first.failures}  # another rate keeps another mask, and scales otherwise


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
    assert any("matched in the order the models register or call them: `drop[dropout]` -> `dropouts.0[dropout]`" in n for n in cases[0].notes)


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
