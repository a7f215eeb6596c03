"""Model pairs the project did not write: paddle.vision.models against torch definitions with torchvision names.

Through the CLI, as a user porting a model would: convert a torch checkpoint to
paddle and back (verified), load each file with its own framework's loader and
compare logits, `check` the pair, and let `--name-map auto` (or `crossattn map`)
pair the layers where names differ: a `backbone.` wrapper, and LeNet, ShuffleNetV2
and DenseNet, whose paddle.vision layer names have nothing in common with torch's.
"""

from __future__ import annotations

import json

import numpy as np
import paddle
import paddle.vision.models as paddle_models
import pytest
import torch
import yaml
from click.testing import CliRunner

import cli
import torch.nn.functional as F
from crossattn.compare import compare
from crossattn.init import initial_state
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for
from paddle_impl import adapter as paddle_adapter
from tests.fixtures import torch_vision_defs
from torch_impl import adapter as torch_adapter
from torch_impl import comparison_calls

DEFS = "tests.fixtures.torch_vision_defs"
SHAPE = (2, 3, 64, 64)  # batch 2: a train-mode BatchNorm needs two values per channel
FAMILIES = {  # name: (torch factory, paddle factory, layer names agree, input shape)
    "resnet18": ("resnet18", "resnet18", True, SHAPE),
    "shufflenet_v2_x0_25": ("shufflenet_v2_x0_25", "shufflenet_v2_x0_25", False, SHAPE),
    "lenet": ("lenet", "LeNet", False, (2, 1, 28, 28)),
    "densenet121": ("densenet121", "densenet121", False, SHAPE),
    "resnet50": ("resnet50", "resnet50", True, SHAPE),
}
FAST = ["resnet18", "shufflenet_v2_x0_25", "lenet"]
CHECKED = ["resnet18", "lenet"]


def run(args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], standalone_mode=False, catch_exceptions=True)


def ok(result):
    assert result.exception is None, result.output + repr(result.exception)
    return result.output


@pytest.fixture()
def model_args(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("num_classes: 10\n")
    return path


def pair_args(torch_factory, paddle_factory, model_args, *extra, shape=SHAPE):
    return ["--torch-model", f"{DEFS}:{torch_factory}", "--paddle-model", f"paddle.vision.models:{paddle_factory}",
            "--model-args", model_args, "--input-shape", ",".join(map(str, shape)), *extra]


def torch_checkpoint(torch_factory, path):
    """A torch checkpoint with every tensor random (BatchNorm statistics too), saved with torch.save."""
    model = getattr(torch_vision_defs, torch_factory)(num_classes=10)
    state = initial_state(torch_adapter.slots(model), torch_adapter.state(model), "torch", seed=7, mode="check")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return state


def torch_logits(torch_factory, state_dict, x):
    model = getattr(torch_vision_defs, torch_factory)(num_classes=10).double()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()(torch.from_numpy(x)).detach().numpy()


def paddle_logits(paddle_factory, state_dict, x):
    model = getattr(paddle_models, paddle_factory)(num_classes=10)
    missing, unexpected = model.set_state_dict(state_dict)
    assert not missing and not unexpected
    paddle_adapter.to_dtype(model, "float64")
    model.eval()
    return model(paddle.to_tensor(x)).numpy()


def round_trip(family, tmp_path, model_args, *name_map):
    torch_factory, paddle_factory, _, shape = FAMILIES[family]
    original = torch_checkpoint(torch_factory, tmp_path / "model.pt")
    pair = pair_args(torch_factory, paddle_factory, model_args, *name_map, shape=shape)
    forward = ok(run(["convert", tmp_path / "model.pt", tmp_path / "model.pdparams", *pair]))
    assert "verify    PASS" in forward
    back = ok(run(["convert", tmp_path / "model.pdparams", tmp_path / "back.pt", *pair]))
    assert "verify    PASS" in back
    # each framework's own loader reads what was written
    paddle_state = paddle.load(str(tmp_path / "model.pdparams"))
    torch_state = torch.load(tmp_path / "back.pt", weights_only=True)
    x = np.random.default_rng(3).standard_normal(shape)
    reference = torch_logits(torch_factory, {k: torch.from_numpy(v) for k, v in original.items()}, x)
    tol = tolerance_for("float64")
    assert compare("logits", "output", paddle_logits(paddle_factory, paddle_state, x), reference, tol).passed
    assert compare("logits", "output", torch_logits(torch_factory, torch_state, x), reference, tol).passed
    for key, value in original.items():  # torch -> paddle -> torch is exact (the batch counter comes back 0)
        expected = np.zeros_like(value) if key.endswith("num_batches_tracked") else value
        np.testing.assert_array_equal(torch_state[key].numpy(), expected, err_msg=key)
    return forward


@pytest.mark.parametrize("family", FAST)
def test_convert_both_ways_loads_in_each_framework_with_equal_logits(family, tmp_path, model_args):
    agree = FAMILIES[family][2]
    output = round_trip(family, tmp_path, model_args, *([] if agree else ["--name-map", "auto"]))
    if not agree:
        assert "note: --name-map auto:" in output and "matched by structure" in output


@pytest.mark.slow
@pytest.mark.parametrize("family", ["densenet121", "resnet50"])
def test_larger_models_convert_both_ways(family, tmp_path, model_args):
    round_trip(family, tmp_path, model_args, *([] if FAMILIES[family][2] else ["--name-map", "auto"]))


@pytest.mark.parametrize("family", CHECKED)
def test_check_passes_on_the_pair(family, model_args):
    torch_factory, paddle_factory, agree, shape = FAMILIES[family]
    name_map = [] if agree else ["--name-map", "auto"]
    output = ok(run(["check", *pair_args(torch_factory, paddle_factory, model_args, *name_map, shape=shape)]))
    assert "6 passed, 0 failed" in output
    assert agree or "note: --name-map auto" in output


class TorchQuietBN(torch.nn.Module):
    """A BatchNorm whose input varies by about 1e-6 per channel: its epsilon's float32 rounding shows."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x) * 1e-3).mean((2, 3)))


class PaddleQuietBN(paddle.nn.Layer):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv, self.bn = paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x) * 1e-3).mean((2, 3)))


def test_paddle_float32_batchnorm_epsilon_is_given_to_torch(monkeypatch, model_args):
    """paddle keeps BatchNorm's epsilon in float32: 1e-5 is 9.99999974738e-06 there.

    Where a channel's batch variance is small a float64 train-mode check of a
    torch model with torch's own 1e-5 sees that 2.5e-13 as errors above 1e-9.
    The check gives torch's BatchNorm paddle's float32 value (paddle cannot hold
    one in between, so no difference can hide there) and says so.
    """
    output = ok(run(["check", *pair_args("shufflenet_v2_x0_25", "shufflenet_v2_x0_25", model_args, "--name-map",
                                         "auto")]))
    assert "6 passed, 0 failed" in output
    assert "epsilons are used as paddle holds them, in float32 (56 layer(s)" in output
    step = ["check", "--mode", "train", "--direction", "paddle2torch", "--torch-model", f"{__name__}:TorchQuietBN",
            "--paddle-model", f"{__name__}:PaddleQuietBN", "--input-shape", "2,3,6,6"]
    assert "1 passed, 0 failed" in ok(run(step))
    monkeypatch.setattr(ModelPair, "_held_as_paddle", lambda self, model: None)  # the layers keep 1e-5 ...
    called = ok(run(step))  # ... and the step's function mode gives F.batch_norm paddle's value instead
    assert "1 passed, 0 failed" in called and "batch_norm eps 1e-05 -> 9.99999975e-06" in called
    # torch's own 1e-5: neither the layers' epsilons nor the functional call's are given paddle's value
    monkeypatch.setattr(comparison_calls, "HELD_CALLS", comparison_calls.HELD_CALLS - {F.batch_norm})
    strict = run(step)
    assert "0 passed, 1 failed" in strict.output, strict.output
    assert "epsilons are used" not in strict.output and "batch_norm eps" not in strict.output


def test_a_train_step_over_two_values_per_channel_is_named_when_it_fails(model_args):
    """ResNet18 at 8x8: layer2 onwards sees 1x1 maps, two values per channel at batch 2. Such a train-mode step
    magnifies float64 rounding past 1e-9 (gradient scale 1.8e9) for equal models; the failure names the layers."""
    result = run(["check", "--mode", "train", "--direction", "torch2paddle",
                  *pair_args("resnet18", "resnet18", model_args, shape=(2, 3, 8, 8))])
    assert "0 passed, 1 failed" in result.output, result.output
    assert "BatchNorm over 4 or fewer values per channel (`layer2.0.bn1`" in result.output
    passing = ok(run(["check", "--mode", "train", "--direction", "torch2paddle",
                      *pair_args("resnet18", "resnet18", model_args, shape=(2, 3, 32, 32))]))
    assert "1 passed, 0 failed" in passing and "values per channel" not in passing


def test_check_fails_the_pair_when_one_batchnorm_differs(model_args):
    """The same check is not vacuous: one BatchNorm epsilon of 1e-3 instead of 1e-5 in layer3 fails it."""
    result = run(["check", "--mode", "eval", "--direction", "torch2paddle",
                  *pair_args("resnet18_wrong_eps", "resnet18", model_args)])
    assert isinstance(result.exception, SystemExit) and result.exception.code == 1, result.output
    assert "0 passed, 3 failed" in result.output  # the standard input, the large and the resized probes


def test_a_wrapped_model_converts_with_an_automatic_map(tmp_path, model_args):
    original = torch_checkpoint("wrapped_resnet18", tmp_path / "wrapped.pt")
    pair = pair_args("wrapped_resnet18", "resnet18", model_args)
    refused = run(["convert", tmp_path / "wrapped.pt", tmp_path / "w.pdparams", *pair])
    message = str(refused.exception)
    assert refused.exception is not None and not (tmp_path / "w.pdparams").exists()
    assert len(message) < 3000, "a readable summary, not every key"
    assert "prefix `backbone.`" in message and "--name-map auto" in message
    assert "naming read as" not in message  # torch's BatchNorm names are right here: only the prefix is wrong
    output = ok(run(["convert", tmp_path / "wrapped.pt", tmp_path / "w.pdparams", *pair, "--name-map", "auto"]))
    assert "prefix `backbone.` of the torch side removed" in output and "verify    PASS" in output
    ok(run(["convert", tmp_path / "w.pdparams", tmp_path / "w.pt", *pair, "--name-map", "auto", "--no-verify"]))
    back = torch.load(tmp_path / "w.pt", weights_only=True)  # the map read backwards: bit-exact, wrapper restored
    assert set(back) == set(original)
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key].numpy(), value, err_msg=key)


def test_map_writes_a_reviewable_yaml_that_convert_takes(tmp_path, model_args):
    names = tmp_path / "names.yaml"
    output = ok(run(["map", "--torch-model", f"{DEFS}:wrapped_resnet18", "--paddle-model",
                     "paddle.vision.models:resnet18", "--model-args", model_args, "-o", names]))
    assert f"wrote {names}" in output
    text = names.read_text()
    assert text.startswith("#") and "# What was assumed:" in text and "backbone." in text
    assert yaml.safe_load(text) == {"backbone": ""}
    torch_checkpoint("wrapped_resnet18", tmp_path / "wrapped.pt")
    converted = ok(run(["convert", tmp_path / "wrapped.pt", tmp_path / "w.pdparams",
                        *pair_args("wrapped_resnet18", "resnet18", model_args, "--name-map", names), "--no-verify"]))
    assert "written   102 tensors" in converted


def test_map_of_structurally_matched_layers_names_each_pairing(tmp_path, model_args):
    output = ok(run(["map", "--torch-model", f"{DEFS}:shufflenet_v2_x0_25", "--paddle-model",
                     "paddle.vision.models:shufflenet_v2_x0_25", "--model-args", model_args]))
    mapping = yaml.safe_load(output)
    assert mapping["fc"] == "_fc" and mapping["conv1"] == "_conv1"
    assert mapping["stage2.0.branch1.0"] == "2_1._conv_dw_1.0"  # the stride-2 block's depthwise conv
    assert mapping["stage4.3.branch2.5"] == "4_4._conv_linear.0"  # the last block's pointwise conv
    assert mapping["stage2.0"] == "2_1" and mapping["stage3.1"] == "3_2"  # blocks too, for diff
    assert len(set(mapping.values())) == len(mapping)  # one to one, so it reads backwards too
    assert "same order" in output


def test_map_reports_what_it_cannot_pair_and_exits_1(tmp_path, model_args):
    result = run(["map", "--torch-model", f"{DEFS}:resnet18", "--paddle-model", "paddle.vision.models:resnet34",
                  "--model-args", model_args, "-o", tmp_path / "names.yaml"])
    assert isinstance(result.exception, SystemExit) and result.exception.code == 1
    assert "not decided:" in result.output
    assert "NOT DECIDED" in (tmp_path / "names.yaml").read_text()


def test_check_writes_every_transfer_problem_to_its_json(tmp_path, model_args):
    report = tmp_path / "problems.json"
    result = run(["check", *pair_args("wrapped_resnet18", "resnet18", model_args), "--json", report])
    assert result.exception is not None and "are listed in" in str(result.exception)
    data = json.loads(report.read_text())
    assert len(data["problems"]) == 224 and "and 119 more unexpected" in data["error"]
    assert {p["category"] for p in data["problems"]} == {"missing", "unexpected"}
    assert "--strip-prefix" not in data["error"]  # no checkpoint to strip in a check


def test_diff_traces_a_renamed_pair_with_an_automatic_map(model_args):
    output = ok(run(["diff", *pair_args("lenet", "LeNet", model_args, "--name-map", "auto", shape=(2, 1, 28, 28))]))
    assert "note: --name-map auto" in output and "no layer diverges" in output
    assert "fc3" in output and "fc.2" in output  # the last Linear compared under both names
