"""Dropout called as a function in a user's pair: plain dropout masked by a stream both frameworks share, the other
kinds held off, each call named by its layer and its rate compared."""

from __future__ import annotations

import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF

import paddle_impl.functional_dropout
import torch_impl.comparison_calls
from crossattn.check import check_spec
from crossattn.diff import diff_spec
from crossattn.model_pair import ModelPair


class TorchAttention(torch.nn.Module):
    """A timm-style attention: sdpa's dropout_p given only in training, the projection's dropout a function."""

    def __init__(self, attn_rate: float, rate: float, always: bool) -> None:
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)
        self.attn_rate, self.rate, self.always = attn_rate, rate, always

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = TF.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_rate if self.training else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(b, n, c))
        return TF.dropout(y, self.rate) if self.always else TF.dropout(y, self.rate, training=self.training)


class PaddleAttention(paddle.nn.Layer):
    def __init__(self, attn_rate: float, rate: float, always: bool) -> None:
        super().__init__()
        self.qkv, self.proj = paddle.nn.Linear(8, 24), paddle.nn.Linear(8, 8)
        self.attn_rate, self.rate, self.always = attn_rate, rate, always

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape([b, n, 3, 2, 4]).transpose([2, 0, 1, 3, 4]).unbind(0)
        y = PF.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_rate, training=self.training)
        y = self.proj(y.reshape([b, n, c]))
        return PF.dropout(y, self.rate) if self.always else PF.dropout(y, self.rate, training=self.training)


class TorchNet(torch.nn.Module):
    def __init__(self, attn_rate: float = 0.1, rate: float = 0.2, always: bool = False) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([TorchAttention(attn_rate, rate, always) for _ in range(2)])
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class PaddleNet(paddle.nn.Layer):
    def __init__(self, attn_rate: float = 0.1, rate: float = 0.2, always: bool = False) -> None:
        super().__init__()
        self.blocks = paddle.nn.LayerList([PaddleAttention(attn_rate, rate, always) for _ in range(2)])
        self.head = paddle.nn.Linear(8, 4)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _pair(torch_args=None, paddle_args=None) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:PaddleNet",
                                    {"torch": torch_args or {}, "paddle": paddle_args or {}}, input_shape=(2, 5, 8))


def _rows(case) -> dict[str, bool]:
    return {c.tensor: c.passed for c in case.comparisons if c.category == "dropout"}


HELD = {"blocks.0[attention dropout].p", "blocks.0[dropout].p", "blocks.1[attention dropout].p",
        "blocks.1[dropout].p"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_with_functional_dropout_passes_and_names_each_call_by_its_layer(dtype):
    cases = check_spec(_pair(), dtype=dtype)
    assert all(c.passed for c in cases), [c.failures for c in cases if not c.passed]
    train = [c for c in cases if c.mode == "train"]
    assert len(train) == 2 and all(set(_rows(c)) == HELD for c in train)
    assert all(not _rows(c) for c in cases if c.mode == "eval")  # dropout off in eval: nothing held


def test_without_the_hold_the_equal_pair_fails_in_train_mode(monkeypatch):
    monkeypatch.setattr(torch_impl.comparison_calls, "HELD_DROPOUT", {})
    monkeypatch.setattr(paddle_impl.functional_dropout, "HELD_DROPOUT", {})
    cases = check_spec(_pair(), modes=("train",))
    assert not any(c.passed for c in cases)
    assert all(not _rows(c) for c in cases)


@pytest.mark.parametrize("paddle_args, row, said", [
    ({"rate": 0.3}, "blocks.0[dropout].p", "rate 0.3 vs reference 0.2"),
    ({"attn_rate": 0.0}, "blocks.0[attention dropout].p", "dropout in torch only (rate 0.1)"),
])
def test_a_different_rate_or_a_dropout_on_one_side_fails(paddle_args, row, said):
    first = check_spec(_pair({}, paddle_args), modes=("train",))[0]  # torch -> paddle
    failing = {c.tensor: c.note for c in first.failures}
    assert row in failing and said in failing[row], failing
    # another rate of plain dropout keeps another mask: the outputs differ too; attention dropout is held off
    assert ("output" in failing) is (row == "blocks.0[dropout].p")


def test_a_dropout_left_on_at_inference_on_one_side_fails_the_eval_case():
    """torch's `F.dropout(x, p)` defaults to training=True: the model drops at inference, paddle's does not."""
    cases = check_spec(_pair({"always": True}, {}), modes=("eval",))
    assert cases and not any(c.passed for c in cases)
    assert all({"blocks.0[dropout].p", "blocks.1[dropout].p", "output"} <= {c.tensor for c in case.failures}
               for case in cases)
    assert any("drops at inference" in note for note in cases[0].notes)


def test_both_sides_dropping_at_inference_pass_with_a_note():
    cases = check_spec(_pair({"always": True}, {"always": True}), modes=("eval",))
    assert all(c.passed for c in cases)
    assert all("drops at inference" in " ".join(c.notes) for c in cases)


class TorchLayerDropout(torch.nn.Module):
    def __init__(self, rate: float = 0.2) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Dropout(rate), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


class PaddleFunctionalDropout(paddle.nn.Layer):
    def __init__(self, rate: float = 0.2) -> None:
        super().__init__()
        self.fc1, self.fc2 = paddle.nn.Linear(6, 8), paddle.nn.Linear(8, 3)
        self.rate = rate

    def forward(self, x):
        return self.fc2(PF.dropout(paddle.tanh(self.fc1(x)), self.rate, training=self.training))


@pytest.mark.parametrize("paddle_rate, passes", [(0.2, True), (0.5, False)])
def test_a_dropout_layer_against_a_dropout_function_is_matched_in_order(paddle_rate, passes):
    pair = ModelPair.from_factories(f"{__name__}:TorchLayerDropout", f"{__name__}:PaddleFunctionalDropout",
                                    {"torch": {}, "paddle": {"rate": paddle_rate}}, input_shape=(4, 6))
    first = check_spec(pair, modes=("train",))[0]
    assert first.passed is passes, first.failures
    assert _rows(first) == {"drop[dropout].p": passes}
    assert any("`drop[dropout]` -> `(model)[dropout]`" in note for note in first.notes)


def test_paddle_channel_dropout_over_axes_0_and_1_is_torchs_dropout2d():
    calls, original = paddle_impl.functional_dropout.DropoutCalls(), PF.dropout
    with paddle_impl.functional_dropout.held_dropout_calls(calls):
        x = paddle.ones([2, 3, 4, 4])
        out = PF.dropout(x, 0.25, axis=[0, 1], training=True)
        scaled = PF.dropout(x, 0.25, training=True, mode="downscale_in_infer")
        PF.dropout(x, 0.5, training=False)
    assert calls.held == {"(model)[dropout2d]": 0.25, "(model)[dropout(mode=downscale_in_infer)]": 0.25}
    assert float(out.sum()) == x.size  # held: identity
    kept = scaled.numpy()  # plain dropout: the shared mask, unscaled in downscale_in_infer's train mode
    assert set(kept.ravel().tolist()) == {0.0, 1.0} and 0.5 < kept.mean() < 1.0
    assert PF.dropout is original  # restored on leaving


def test_diff_notes_the_dropout_calls_it_held():
    report = diff_spec(_pair(), mode="train")
    assert any("dropout calls (plain dropout masked by the shared stream" in note and "[attention dropout]" in note
               for note in report.rounding), report.rounding


def test_align_masks_dropout_functions_alike_in_both_frameworks_and_says_so():
    from crossattn.align import AlignSettings, align
    from crossattn.training.config import TrainConfig

    report = align(_classifier_pair(), TrainConfig(), AlignSettings(steps=2, batch_size=4))
    assert report.passed, [row.worst for row in report.rows]
    assert any("plain dropout applied with the masks of one stream" in note and "torch: (model)[dropout] (p=0.2)" in note
               and "paddle: (model)[dropout] (p=0.2)" in note for note in report.notes), report.notes


def _classifier_pair() -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchFunctionalDropout", f"{__name__}:PaddleFunctionalDropout",
                                    {"torch": {}, "paddle": {}}, input_shape=(4, 6))


class TorchFunctionalDropout(torch.nn.Module):
    def __init__(self, rate: float = 0.2) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
        self.rate = rate

    def forward(self, x):
        return self.fc2(TF.dropout(torch.tanh(self.fc1(x)), self.rate, training=self.training))
