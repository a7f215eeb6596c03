"""Recurrent layers (LSTM, GRU, simple RNN) in a user's pair: slots, check, dropout between layers, conversion."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.errors import CrossattnError
from crossattn.model_pair import ModelPair
from weight_transfer.convert import convert

PADDLE_CELLS = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "SimpleRNN"}


class TorchRecurrent(torch.nn.Module):
    def __init__(self, cell: str = "LSTM", layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 6, 3, padding=1)
        self.rnn = getattr(torch.nn, cell)(6, 8, num_layers=layers, batch_first=True, bidirectional=True,
                                           dropout=dropout)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        out, _ = self.rnn(self.conv(x).transpose(1, 2))
        return self.head(out)


class PaddleRecurrent(paddle.nn.Layer):
    def __init__(self, cell: str = "LSTM", layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv1D(4, 6, 3, padding=1)
        self.rnn = getattr(paddle.nn, PADDLE_CELLS[cell])(6, 8, num_layers=layers, direction="bidirect",
                                                          dropout=dropout)
        self.head = paddle.nn.Linear(16, 5)

    def forward(self, x):
        out, _ = self.rnn(self.conv(x).transpose([0, 2, 1]))
        return self.head(out)


def _pair(cell: str = "LSTM", torch_args=None, paddle_args=None) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchRecurrent", f"{__name__}:PaddleRecurrent",
                                    {"torch": {"cell": cell, **(torch_args or {})},
                                     "paddle": {"cell": cell, **(paddle_args or {})}}, input_shape=(2, 4, 7))


def test_paddle_slots_hold_each_recurrent_weight_once_with_its_cells_name_as_an_alias():
    slots = _pair().slots("paddle")
    assert not any(".cell" in key for key in slots)
    assert slots["rnn.weight_ih_l0"].aliases == ("rnn.0.cell_fw.weight_ih",)
    assert slots["rnn.bias_hh_l1_reverse"].aliases == ("rnn.1.cell_bw.bias_hh",)
    assert {k for k in slots if k.startswith("rnn.")} == {k for k in _pair().slots("torch") if k.startswith("rnn.")}


@pytest.mark.parametrize("cell, dtype", [("LSTM", "float64"), ("LSTM", "float32"), ("GRU", "float64"),
                                         ("GRU", "float32"), ("RNN", "float64")])
def test_an_equal_recurrent_pair_passes_every_case(cell, dtype):
    """paddle's fused recurrent kernel has no eval-mode backward; the step runs it in train mode without
    dropout, which computes the same."""
    cases = check_spec(_pair(cell), dtype=dtype)
    assert len(cases) == 6 and all(c.passed for c in cases), [c.failures for c in cases if not c.passed]
    assert any(c.tensor == "rnn.weight_hh_l1_reverse.grad" for c in cases[0].comparisons)


def test_a_recurrent_weight_changed_after_the_transfer_fails():
    def tamper(state):
        key = next(k for k in state if k.endswith("weight_hh_l1_reverse"))
        state[key] = state[key] * (1 + 1e-6)

    cases = check_spec(_pair(), modes=("eval",), after_transfer=tamper, probes=())
    assert not any(c.passed for c in cases)


@pytest.mark.parametrize("paddle_rate, passes", [(0.2, True), (0.3, False)])
def test_the_dropout_between_recurrent_layers_is_held_and_its_rate_compared(paddle_rate, passes):
    first = check_spec(_pair("LSTM", {"dropout": 0.2}, {"dropout": paddle_rate}), modes=("train",))[0]
    assert first.passed is passes, first.failures
    rows = {c.tensor: c.passed for c in first.comparisons if c.category == "dropout"}
    assert rows == {"rnn.p": passes}


def _paddle_model() -> paddle.nn.Layer:
    paddle.seed(3)
    return PaddleRecurrent("GRU")


def test_paddles_own_file_with_its_aliases_converts_to_torch_and_back(tmp_path):
    pair = _pair("GRU")
    source = tmp_path / "own.pdparams"
    model = _paddle_model()
    paddle.save(model.state_dict(), str(source))
    assert "rnn.0.cell_fw.weight_ih" in paddle.load(str(source))
    report = convert(source, tmp_path / "gru.pt", pair)
    assert report.written and report.verification.passed, report.verification.lines()
    torch_model = TorchRecurrent("GRU")
    torch_model.load_state_dict(torch.load(tmp_path / "gru.pt", weights_only=True))
    np.testing.assert_array_equal(torch_model.rnn.weight_hh_l0_reverse.detach().numpy(),
                                  model.rnn.weight_hh_l0_reverse.numpy())

    back = convert(tmp_path / "gru.pt", tmp_path / "back.pdparams", pair)
    assert back.written and back.verification.passed, back.verification.lines()
    written = paddle.load(str(tmp_path / "back.pdparams"))
    assert set(written) == set(model.state_dict())  # aliases included, as paddle's own file has them
    np.testing.assert_array_equal(written["rnn.1.cell_bw.weight_ih"], model.rnn.weight_ih_l1_reverse.numpy())


def test_a_file_whose_alias_disagrees_with_its_tensor_is_refused(tmp_path):
    state = {k: v.numpy() for k, v in _paddle_model().state_dict().items()}
    state["rnn.0.cell_fw.weight_hh"] = state["rnn.0.cell_fw.weight_hh"] + 1
    source = tmp_path / "damaged.pdparams"
    paddle.save(state, str(source))
    with pytest.raises(CrossattnError, match=r"`rnn.0.cell_fw.weight_hh` differs from `rnn.weight_hh_l0`"):
        convert(source, tmp_path / "out.pt", _pair("GRU"))
    assert not (tmp_path / "out.pt").exists()
