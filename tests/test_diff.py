"""Layer-by-layer divergence: a planted defect is reported first, exactly where it is."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
import torch
import yaml
from click.testing import CliRunner

import cli
from crossattn.diff import diff_models, diff_spec, transfer_by_name_map
from crossattn.spec import load_spec, resolve_spec
from tests.fixtures import user_pair
from torch_impl import comparison_calls


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("single_step", [False, True])
def test_twins_have_no_divergent_layer(mode, single_step):
    report = diff_spec(load_spec(resolve_spec("non_local_embedded_gaussian")), mode=mode, single_step=single_step)
    assert report.passed and report.rows and not report.unmatched_reference
    assert [r.layer for r in report.rows][-1] == ""  # the whole model last


@pytest.mark.parametrize("single_step", [False, True])
def test_planted_epsilon_is_reported_first_at_its_layer(monkeypatch, single_step):
    import paddle_impl.layers as paddle_layers

    original = paddle_layers.batch_norm

    def wrong_epsilon(dimension, channels):
        layer = original(dimension, channels)
        layer._epsilon = 1e-2
        return layer

    monkeypatch.setattr("paddle_impl.blocks.non_local.batch_norm", wrong_epsilon)
    report = diff_spec(load_spec(resolve_spec("non_local_embedded_gaussian")), mode="eval", single_step=single_step)
    assert report.first_output == "W.1"
    assert [r.layer for r in report.rows if not r.output.passed][0] == "W.1"
    assert all(r.output.passed for r in report.rows if r.layer in ("g", "theta", "phi", "W.0"))


def _user_models(paddle_factory):
    tmodel, pmodel = user_pair.build_torch().double(), paddle_factory()
    pmodel.to(dtype="float64")
    transfer_by_name_map("torch", tmodel, "paddle", pmodel, user_pair.NAME_MAP)
    return tmodel, pmodel


def test_user_pair_with_a_name_map_matches():
    tmodel, pmodel = _user_models(user_pair.build_paddle)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode="train")
    assert report.passed, [(r.layer, r.output.max_abs) for r in report.rows]
    assert {r.candidate for r in report.rows} >= {"body.conv_b", "body.norm_b", "classifier"}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_user_pair_defect_is_pinned_to_its_layer(mode):
    tmodel, pmodel = _user_models(user_pair.build_paddle_defect)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    accumulated = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode=mode)
    assert accumulated.first_output == "features.4"
    single = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode=mode, single_step=True)
    diverging = [r.layer for r in single.rows if not r.output.passed]
    # fed the reference's inputs, only the defective layer and the containers wrapping it differ
    assert diverging[0] == "features.4"
    assert "features.6" not in diverging and "features.7" not in diverging


def test_cli_diff_on_a_user_pair(tmp_path):
    name_map = tmp_path / "map.yaml"
    name_map.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    out = tmp_path / "diff.json"
    args = ["diff", "--torch-model", "tests.fixtures.user_pair:build_torch",
            "--paddle-model", "tests.fixtures.user_pair:build_paddle_defect", "--name-map", str(name_map),
            "--input-shape", "2,3,6,6", "--single-step", "--json", str(out)]
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 1, result.output
    assert "first output divergence: `features.4`" in result.output
    assert "body.norm_b" in result.output
    assert json.loads(out.read_text())["first_output"] == "features.4"


@pytest.mark.parametrize("paddle_factory, diverges", [("build_paddle_with_position", False),
                                                        ("build_paddle_forgetting_position", True)])
def test_diff_of_a_user_pair_starts_from_the_weights_check_draws(paddle_factory, diverges):
    """The position term is zeros as the factories make it, so a side that never adds it agreed at those weights:
    check failed while diff said no layer diverges. Both now start from weights drawn and transferred."""
    args = ["--torch-model", "tests.fixtures.user_pair:build_torch_with_position",
            "--paddle-model", f"tests.fixtures.user_pair:{paddle_factory}", "--input-shape", "2,3,6,6"]
    checked = CliRunner().invoke(cli.cli, ["check", *args, "--layers", "--direction", "torch2paddle",
                                           "--mode", "eval"])
    traced = CliRunner().invoke(cli.cli, ["diff", *args])
    assert checked.exit_code == traced.exit_code == (1 if diverges else 0), (checked.output, traced.output)
    if diverges:
        assert "first output divergence: `head`" in traced.output
        assert "first output divergence: `head`" in checked.output
    else:
        assert "no layer diverges" in traced.output and "no layer diverges" in checked.output


def test_diff_names_a_parameter_gradient_lost_between_layers(tmp_path):
    """A parameter used by the model's own code between its layers and detached on one side: every layer's output
    and gradients agree, only its gradient differs; diff used to say no layer diverges."""
    args = ["diff", "--torch-model", "tests.fixtures.user_pair:build_torch_with_position", "--input-shape",
            "2,3,6,6", "--json", str(tmp_path / "d.json"), "--paddle-model"]
    equal = CliRunner().invoke(cli.cli, [*args, "tests.fixtures.user_pair:build_paddle_with_position"])
    assert equal.exit_code == 0 and "parameter gradients: 5 of 5 agree" in equal.output, equal.output
    detached = CliRunner().invoke(cli.cli, [*args, "tests.fixtures.user_pair:build_paddle_detaching_position"])
    assert detached.exit_code == 1, detached.output
    assert "DIFF pos.grad" in detached.output and "the gradient of `pos` differs" in detached.output
    report = json.loads((tmp_path / "d.json").read_text())
    assert [c["tensor"] for c in report["param_grads"] if not c["passed"]] == ["pos.grad"]


def test_cli_check_layers_prints_the_trace():
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--layers", "--direction", "torch2paddle",
                                          "--mode", "eval"])
    assert result.exit_code == 0, result.output
    assert "no layer diverges" in result.output and "W.0" in result.output


@pytest.mark.parametrize("args,message", [
    (["--torch-model", "tests.fixtures.user_pair:NAME_MAP", "--paddle-model", "tests.fixtures.user_pair:build_paddle",
      "--input-shape", "2,3,6,6"], "has no callable"),
    (["non_local_gaussian", "--torch-model", "tests.fixtures.user_pair:build_torch"], "not both"),
])
def test_cli_diff_user_errors_are_one_paragraph(args, message):
    result = CliRunner().invoke(cli.cli, ["diff", *args], standalone_mode=False)
    assert result.exception is not None and message in str(result.exception), result.exception


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_cli_refuses_tolerances_that_would_pass_anything(value):
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--atol", value])
    assert result.exit_code == 2 and "--atol" in result.output


def test_cli_json_to_an_unwritable_path_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--mode", "eval", "--direction",
                                          "torch2paddle", "--json", str(tmp_path / "file" / "r.json")],
                                standalone_mode=False)
    assert "cannot write it" in str(result.exception)


def test_cli_diff_input_the_models_cannot_take_is_a_user_error(tmp_path):
    name_map = tmp_path / "map.yaml"
    name_map.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    result = CliRunner().invoke(cli.cli, ["diff", "--torch-model", "tests.fixtures.user_pair:build_torch",
                                          "--paddle-model", "tests.fixtures.user_pair:build_paddle", "--name-map",
                                          str(name_map), "--input-shape", "2,3"], standalone_mode=False)
    message = str(result.exception)
    assert "forward failed on an input of shape [2, 3]" in message and "--input-shape" in message, message


class _TorchPooled(torch.nn.Module):
    """conv -> BN -> ReLU -> adaptive average pool over 7x7 -> linear, with torch's usual layer names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.relu = torch.nn.ReLU()
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn(self.conv(x)))), 1))


class _PaddlePooled(paddle.nn.Layer):
    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 6, 3, padding=1)
        self.bn = paddle.nn.BatchNorm2D(6, momentum=momentum)
        self.relu = paddle.nn.ReLU()
        self.avgpool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(paddle.flatten(self.avgpool(self.relu(self.bn(self.conv(x)))), 1))


def _pooled_pair(momentum: float = 0.9):
    torch.manual_seed(0)
    tmodel, pmodel = _TorchPooled().double(), _PaddlePooled(momentum)
    pmodel.to(dtype="float64")
    transfer_by_name_map("torch", tmodel, "paddle", pmodel, {})
    return tmodel, pmodel


@pytest.mark.parametrize("single_step", [False, True])
def test_a_framework_constant_held_in_float32_is_named_not_failed(single_step, monkeypatch):
    """paddle's adaptive average pool backward multiplies by float32(1/49). A torch trace takes paddle's backward
    for the pool (and says so); without that, every gradient below it is off by one uniform factor, a known
    framework rounding: it passes, and the note names the pool."""
    tmodel, pmodel = _pooled_pair()
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, mode="train", single_step=single_step)
    assert report.passed, (report.forward, report.backward)
    (note,) = report.rounding  # the BatchNorm's epsilon is the other call given paddle's value
    assert note.startswith("torch's calls given the float32 values paddle applies (`torch_impl.comparison_calls`)")
    assert "adaptive_avg_pool2d backward is paddle's (1/N held in float32)" in note and "uniform factor" not in note
    monkeypatch.setattr(comparison_calls, "AVERAGE_POOLS", frozenset())
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, mode="train", single_step=single_step)
    assert report.passed, (report.forward, report.backward)
    assert "avgpool" in report.rounding[-1] and "uniform factor" in report.rounding[-1]


@pytest.mark.parametrize("single_step", [False, True])
def test_diff_compares_running_statistics(single_step):
    tmodel, pmodel = _pooled_pair(momentum=0.99)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7))
    eval_report = diff_models(("torch", tmodel), ("paddle", pmodel), x, mode="eval", single_step=single_step)
    assert eval_report.passed  # eval mode never moves the statistics
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, mode="train", single_step=single_step)
    assert not report.passed  # torch's 0.1 and paddle's 0.99: each side follows its own rule, the rules differ
    (wrong,) = [c for c in report.buffers if not c.passed]
    assert wrong.tensor == "bn.momentum" and "its counterpart of torch's 0.1 is 0.9" in wrong.note
    assert {c.tensor for c in report.buffers} >= {"bn.running_mean", "bn.running_var"}


def test_a_large_relative_error_on_a_small_tensor_fails():
    """No absolute bound that ignores scale: a 1.45e-3 norm-relative error fails however small the tensor."""
    from crossattn.compare import compare, judge
    from crossattn.tolerances import FLOAT32, FLOAT64

    reference = np.random.default_rng(0).standard_normal(100) * 1e-4
    candidate = reference * (1 + 1.45e-3)
    assert not compare("t", "output", candidate, reference, FLOAT64).passed
    r32, c32 = reference.astype(np.float32), candidate.astype(np.float32)
    assert not judge("t", "output", r32, c32, reference, candidate, FLOAT32).passed
    assert judge("t", "output", r32, r32, reference, reference, FLOAT32).passed


def test_float32_rounding_worse_on_one_side_passes_both_ways_but_lost_precision_fails():
    from crossattn.compare import judge
    from crossattn.tolerances import FLOAT32

    exact = np.random.default_rng(1).standard_normal(1000)
    good = exact.astype(np.float32)
    noisy = (exact * (1 + 3e-6 * np.random.default_rng(2).standard_normal(1000))).astype(np.float32)
    half = exact.astype(np.float16).astype(np.float32)
    assert judge("t", "output", good, noisy, exact, exact, FLOAT32).passed  # 50x worse rounding: same function
    assert judge("t", "output", noisy, good, exact, exact, FLOAT32).passed  # and in the other direction
    verdict = judge("t", "output", good, half, exact, exact, FLOAT32)  # float16 arithmetic where float32 was asked
    assert not verdict.passed and "less accurate" in verdict.note


def test_a_layer_output_of_another_shape_is_named_with_both_shapes():
    """The table shows inf for a shape difference; the line below says what it is."""
    from crossattn.report import diff_table

    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)).double()
    pmodel = paddle.nn.Sequential(paddle.nn.Conv2DTranspose(2, 3, 3, stride=2, padding=1))
    pmodel.to(dtype="float64")
    transfer_by_name_map("torch", tmodel, "paddle", pmodel, {})
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x)
    assert not report.passed
    assert "`0` output: shape [1, 3, 7, 7] vs reference [1, 3, 8, 8]" in diff_table(report)
