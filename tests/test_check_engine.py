"""The check and diff engines on toy twins built to differ in one place: each difference is caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import paddle
import pytest
import torch

from crossattn import registry
from crossattn.check import check_spec
from crossattn.diff import diff_models, diff_spec, transfer_by_name_map
from crossattn.errors import CrossattnError
from crossattn.options import Options
from crossattn.spec import Spec, load_spec, resolve_spec


@dataclasses.dataclass(frozen=True)
class ToyOptions(Options):
    flaw: str = "none"  # which difference the paddle twin has


class TorchToy(torch.nn.Module):
    def __init__(self, flaw: str = "none") -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("ema", torch.zeros(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.fc.bias.requires_grad_(flaw != "frozen")

    def forward(self, x):
        y = self.fc(x)
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(0.1 * y.mean(0))
                self.steps += 1
        return y


class PaddleToy(paddle.nn.Layer):
    def __init__(self, flaw: str = "none") -> None:
        super().__init__()
        self.flaw = flaw
        self.fc = paddle.nn.Linear(4, 3)
        self.register_buffer("ema", paddle.zeros([3]))
        self.register_buffer("steps", paddle.zeros([], dtype="int64"))

    def forward(self, x):
        y = self.fc(x)
        if self.training:
            keep = 0.5 if self.flaw == "ema" else 0.9
            with paddle.no_grad():
                self.ema.set_value(self.ema * keep + (1 - keep) * y.mean(0))
                self.steps.set_value(self.steps + (2 if self.flaw == "steps" else 1))
        return (y, y) if self.flaw == "tuple" else y


@pytest.fixture()
def toy(monkeypatch):
    entry = registry.Entry("toy_for_tests", "block", ToyOptions, "unused:Unused", "test only")
    registry.entries()  # discover the real entries first
    monkeypatch.setitem(registry._ENTRIES, "toy_for_tests", entry)
    original = registry.twin_class
    monkeypatch.setattr(registry, "twin_class", lambda type_name, fw: (TorchToy if fw == "torch" else PaddleToy)
                        if type_name == "toy_for_tests" else original(type_name, fw))
    return lambda flaw: Spec("toy_for_tests", ToyOptions(flaw=flaw), name=f"toy-{flaw}", input_shape=(5, 4))


def _failures(cases):
    return {(c.direction, c.mode, f.tensor, f.category) for c in cases for f in c.failures}


def test_identical_toys_pass_with_buffers_compared(toy):
    cases = check_spec(toy("none"))
    assert all(c.passed for c in cases)
    train = [c for c in cases if c.mode == "train"][0]
    assert {c.tensor for c in train.comparisons if c.category == "buffer"} == {
        "ema", "steps", "ema [as built]", "steps [as built]"}  # after the step, and as each factory builds it


@pytest.mark.parametrize("flaw,tensor", [("ema", "ema"), ("steps", "steps")])
def test_a_buffer_updated_differently_fails(toy, flaw, tensor):
    failed = _failures(check_spec(toy(flaw)))
    assert {(d, tensor) for d, m, t, c in failed if m == "train"} == {
        ("torch->paddle", tensor), ("paddle->torch", tensor)}


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_a_tensor_frozen_on_one_side_fails_in_either_direction(toy, direction):
    failed = _failures(check_spec(toy("frozen"), directions=(direction,)))
    assert any(t == "fc.bias" and c == "trainable" for _, _, t, c in failed)


def test_a_tuple_output_is_a_clear_error(toy):
    with pytest.raises(CrossattnError, match="returns tuple, not one tensor"):
        check_spec(toy("tuple"), directions=("torch->paddle",))


@pytest.mark.parametrize("direction", ["torch->paddle", "paddle->torch"])
def test_single_step_diff_of_twins_passes_both_ways(direction):
    for name in ("non_local_gaussian", "global_context_add"):
        report = diff_spec(load_spec(resolve_spec(name)), direction, mode="train", single_step=True)
        assert report.passed, (name, report.first_output, report.first_grad)


class _TorchPair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU())
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.backbone(x))


class _PaddlePair(paddle.nn.Layer):
    def __init__(self, epsilon: float = 1e-5, detach: bool = False) -> None:
        super().__init__()
        self.features = paddle.nn.Sequential(paddle.nn.Linear(4, 6), paddle.nn.BatchNorm1D(6, epsilon=epsilon),
                                             paddle.nn.ReLU())
        self.head = paddle.nn.Linear(6, 2)
        self.detach = detach

    def forward(self, x):
        h = self.features(x)
        return self.head(h.detach() if self.detach else h)


def _pair(**paddle_kwargs):
    tmodel, pmodel = _TorchPair().double(), _PaddlePair(**paddle_kwargs)
    pmodel.to(dtype="float64")
    transfer_by_name_map("torch", tmodel, "paddle", pmodel, {"backbone": "features"})
    return tmodel, pmodel


def test_a_prefix_name_map_matches_the_children_and_pins_the_defect():
    tmodel, pmodel = _pair(epsilon=1e-2)
    x = np.random.default_rng(0).standard_normal((5, 4))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, {"backbone": "features"}, mode="eval")
    assert not report.unmatched_reference
    assert report.first_output == "backbone.1"


def test_a_gradient_cut_in_the_candidate_is_a_divergence():
    tmodel, pmodel = _pair(detach=True)
    x = np.random.default_rng(0).standard_normal((5, 4))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, {"backbone": "features"}, mode="train")
    assert report.first_output is None  # forward is the same
    assert report.first_grad is not None and report.first_grad.startswith("backbone")


def test_the_large_probe_holds_both_signs_in_one_batch():
    from crossattn.check import PROBE_SCALE, default_probes, probe_input

    x, _ = probe_input((4, 3, 5, 5), 0, "float64", "large")
    assert (x[0::2] >= PROBE_SCALE).all() and (x[1::2] <= -PROBE_SCALE).all()
    assert default_probes((2, 3, 5, 5)) == ("large",)
    assert default_probes((1, 3, 5, 5)) == ("positive", "negative")  # one sample cannot hold both signs


def test_a_batch_of_one_gets_the_two_signs_as_two_probes():
    spec = dataclasses.replace(load_spec(resolve_spec("se_default")), input_shape=(1, 32, 6, 5))
    cases = check_spec(spec, directions=("torch->paddle",), modes=("eval",))
    assert [c.probe for c in cases] == ["normal", "positive", "negative"] and all(c.passed for c in cases)
    two = check_spec(load_spec(resolve_spec("se_default")), directions=("torch->paddle",), modes=("eval",))
    assert [c.probe for c in two] == ["normal", "large"]
