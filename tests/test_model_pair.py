"""One model-pair notion for every command: a spec, or a user's own --torch-model/--paddle-model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import yaml
from click.testing import CliRunner

import cli
from crossattn.check import check_spec
from crossattn.errors import CrossattnError
from crossattn.model_pair import ModelPair, load_model_args, load_name_map, pair_from_cli
from tests.fixtures import user_pair
from weight_transfer.transfer import map_layer_name

FIXTURE = "tests.fixtures.user_pair"
USER = ["--torch-model", f"{FIXTURE}:build_torch", "--paddle-model", f"{FIXTURE}:build_paddle",
        "--input-shape", "2,3,6,6"]


@pytest.fixture()
def name_map_file(tmp_path):
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    return str(path)


def run(args):
    return CliRunner().invoke(cli.cli, args, standalone_mode=False, catch_exceptions=True)


def test_the_empty_prefix_stands_for_the_whole_model():
    assert map_layer_name("conv1", {"": "backbone"}) == "backbone.conv1"
    assert map_layer_name("", {"": "backbone"}) == "backbone"
    assert map_layer_name("backbone.conv1", {"backbone": ""}) == "conv1"
    assert map_layer_name("head.fc", {"": "net", "head": "cls"}) == "cls.fc"  # longest prefix first


def test_check_takes_a_user_pair_and_passes_it(name_map_file):
    result = run(["check", *USER, "--name-map", name_map_file])
    assert result.exception is None, result.output
    assert "6 passed, 0 failed" in result.output  # 2 directions x 2 modes + the large and the resized probes


def test_check_of_a_user_pair_fails_a_planted_epsilon(name_map_file):
    result = run(["check", "--torch-model", f"{FIXTURE}:build_torch", "--paddle-model",
                  f"{FIXTURE}:build_paddle_defect", "--input-shape", "2,3,6,6", "--name-map", name_map_file])
    assert isinstance(result.exception, SystemExit) and result.exception.code == 1, result.output
    assert "FAIL" in result.output


def test_diff_and_check_take_the_same_pair(name_map_file, tmp_path):
    out = tmp_path / "diff.json"
    result = run(["diff", *USER, "--name-map", name_map_file, "--json", str(out), "--mode", "train"])
    assert result.exception is None, result.output
    report = json.loads(out.read_text())
    assert report["first_output"] is None and report["first_grad"] is None
    assert {row["candidate"] for row in report["layers"]} >= {"body.conv_b", "classifier"}


def test_convert_takes_a_user_pair_both_ways(name_map_file, tmp_path):
    model = user_pair.build_torch()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    src = tmp_path / "user.pt"
    torch.save(model.state_dict(), src)
    dst = tmp_path / "user.pdparams"
    result = run(["convert", str(src), str(dst), *USER, "--name-map", name_map_file])
    assert result.exception is None, result.output
    assert "verify" in result.output and "PASS" in result.output
    loaded = paddle.load(str(dst))  # paddle's own loader reads it
    np.testing.assert_array_equal(loaded["classifier.weight"].numpy(), model.head.weight.detach().numpy().T)
    back = tmp_path / "back.pt"
    result = run(["convert", str(dst), str(back), *USER, "--name-map", name_map_file])
    assert result.exception is None, result.output
    state = torch.load(back, weights_only=True)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key].numpy(), value.numpy())


def test_a_wrapper_prefix_maps_with_the_empty_key(tmp_path):
    module = tmp_path / "wrapped_pair.py"
    module.write_text(textwrap.dedent("""
        import paddle
        from tests.fixtures import user_pair

        class Wrapped(paddle.nn.Layer):
            def __init__(self):
                super().__init__()
                self.backbone = user_pair.build_paddle()

            def forward(self, x):
                return self.backbone(x)

        def build():
            return Wrapped()
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        mapping = {"": "backbone", **{k: f"backbone.{v}" for k, v in user_pair.NAME_MAP.items()}}
        pair = ModelPair.from_factories(f"{FIXTURE}:build_torch", "wrapped_pair:build", name_map=mapping,
                                        input_shape=(2, 3, 6, 6))
        cases = check_spec(pair, modes=("eval",))
        assert all(case.passed for case in cases), [case.worst for case in cases]
    finally:
        sys.path.remove(str(tmp_path))


def test_factories_take_keyword_arguments(tmp_path):
    args = tmp_path / "args.yaml"
    args.write_text("paddle:\n  norm_b_epsilon: 1.0e-5\n")
    module = tmp_path / "pair_with_args.py"
    module.write_text("from tests.fixtures import user_pair\n"
                      "def build(norm_b_epsilon):\n    return user_pair._paddle(norm_b_epsilon)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        pair = ModelPair.from_factories(f"{FIXTURE}:build_torch", "pair_with_args:build", str(args),
                                        user_pair.NAME_MAP, (2, 3, 6, 6))
        assert all(case.passed for case in check_spec(pair, modes=("train",)))
    finally:
        sys.path.remove(str(tmp_path))
    assert load_model_args({"depth": 18}) == {"torch": {"depth": 18}, "paddle": {"depth": 18}}
    assert load_model_args({"torch": {"a": 1}}) == {"torch": {"a": 1}, "paddle": {}}


def test_the_installed_script_imports_from_the_current_folder(tmp_path):
    script = Path(sys.executable).with_name("crossattn")
    if not script.exists():
        pytest.skip("the console script is not installed beside this interpreter")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(textwrap.dedent("""
        def build_torch():
            import torch
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())

        def build_paddle():
            import paddle
            return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.ReLU())
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(cli.__file__).resolve().parent)  # this checkout, not the folder of mypkg
    done = subprocess.run([str(script), "check", "--torch-model", "mypkg.nets:build_torch", "--paddle-model",
                           "mypkg.nets:build_paddle", "--input-shape", "1,3,6,6", "--mode", "eval"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed, 0 failed" in done.stdout  # 2 directions + a batch of one's two probes, one sign each, + resized


@pytest.mark.parametrize("args, words", [
    (["check", "--torch-model", f"{FIXTURE}:build_torch", "--input-shape", "2,3,6,6"], "--paddle-model"),
    (["check", "se_default", "--torch-model", f"{FIXTURE}:build_torch"], "not both"),
    (["check", "--torch-model", "nocolon", "--paddle-model", f"{FIXTURE}:build_paddle"], "MODULE:FACTORY"),
    (["check", "--torch-model", f"{FIXTURE}:build_torchh", "--paddle-model", f"{FIXTURE}:build_paddle",
      "--input-shape", "2,3,6,6"], "did you mean build_torch"),
    (["check", "--torch-model", f"{FIXTURE}:build_paddle", "--paddle-model", f"{FIXTURE}:build_paddle",
      "--input-shape", "2,3,6,6"], "expected a torch.nn.Module"),
    (["check", "--torch-model", "no_such_module_xyz:f", "--paddle-model", f"{FIXTURE}:build_paddle"],
     "cannot import module"),
    (["check", *USER[:4]], "--input-shape"),
    (["diff", "se_default", "--name-map", "x.yaml"], "applies to your own pair"),
    (["convert", "a.pt", "b.pdparams"], "needs a spec"),
])
def test_pair_mistakes_are_one_paragraph_errors(args, words):
    result = run(args)
    assert isinstance(result.exception, CrossattnError), (result.output, result.exception)
    assert words in str(result.exception)


def test_name_maps_are_checked(tmp_path):
    assert load_name_map({None: "backbone"}) == {"": "backbone"}
    with pytest.raises(CrossattnError, match="one-to-one"):
        load_name_map({"a": "x", "b": "x"})
    with pytest.raises(CrossattnError, match="not a layer name"):
        load_name_map({"a.": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(CrossattnError, match=f"--name-map {bad}: expected a mapping"):
        load_name_map(str(bad))


@pytest.mark.parametrize("entry, words", [
    ({"featurs": "body"}, "entry `featurs: body`: the torch model (--torch-model tests.fixtures.user_pair:build_torch"),
    ({"features": "bdy"}, "entry `features: bdy`: the paddle model"),
])
def test_a_map_entry_naming_no_layer_is_an_error_naming_it(tmp_path, entry, words):
    """An entry naming no layer renamed nothing, and the layers it was meant for failed as missing (a FAIL of
    one direction's gradients, with the wrong cause); now it is refused, with the nearest names."""
    names = dict(user_pair.NAME_MAP)
    names.pop("features")
    names.update(entry)
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(names))
    result = run(["check", *USER, "--name-map", str(path)])
    assert isinstance(result.exception, CrossattnError), result.output
    message = str(result.exception)
    assert message.startswith(f"--name-map {path}: {words}")
    assert "did you mean" in message and ("`features`" in message or "`body`" in message)


def test_a_map_may_name_layers_without_parameters():
    """`features.2: body.act_a` names two ReLUs: no state, but diff matches their outputs by the map."""
    pair = ModelPair.from_factories(f"{FIXTURE}:build_torch", f"{FIXTURE}:build_paddle",
                                    name_map=user_pair.NAME_MAP, input_shape=(2, 3, 6, 6))
    assert pair.build("torch") is not None and pair.build("paddle") is not None


def test_a_map_that_merges_two_layers_is_refused():
    pair = ModelPair.from_factories(f"{FIXTURE}:build_torch", f"{FIXTURE}:build_paddle",
                                    name_map={"features": "body", "head": "body.0"},
                                    input_shape=(2, 3, 6, 6))
    with pytest.raises(CrossattnError, match="clash"):
        pair.transfer({}, "paddle", "torch")


def test_a_spec_is_a_pair_too():
    pair = pair_from_cli("se_default")
    assert pair.spec is not None and pair.input_shape == pair.spec.input_shape
    assert pair.layer_map("torch", "paddle") == {}


@pytest.mark.parametrize("name", ["non_local_embedded_gaussian", "global_context_add", "deform_conv_v2", "gcnet_seg"])
@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_zero_initialised_layers_build_without_storage(name, framework):
    """A layer zeroed at build (a non-local block's last conv, GC's last transform, deformable conv's offsets)
    builds lazily too: paddle's set_value on a LazyGuard parameter raised, and the whole model was built and
    initialised for real."""
    from crossattn.frameworks import adapter
    from crossattn.spec import load_spec, resolve_spec

    pair = ModelPair.from_spec(load_spec(resolve_spec(name)))
    with adapter(framework).lazy():
        model = pair.build(framework)
    assert adapter(framework).slots(model)


@pytest.mark.parametrize("command", [["check"], ["check", "--direction", "paddle2torch"], ["diff"]])
def test_an_input_shape_the_model_cannot_take_is_a_user_error_naming_it(command, name_map_file):
    """5 channels into a 3-channel conv: the framework's reason and --input-shape, not a traceback."""
    args = [a if a != "2,3,6,6" else "2,5,6,6" for a in USER]
    result = run([*command, *args, "--name-map", name_map_file])
    assert isinstance(result.exception, CrossattnError), result.output
    message = str(result.exception)
    assert "forward failed on an input of shape [2, 5, 6, 6]" in message and "--input-shape" in message
    assert "channels" in message  # the framework's own reason is kept
    assert "Traceback" not in message and "\n" not in message



class TorchLazy(torch.nn.Module):
    """A head whose input width comes from the first forward (`nn.LazyLinear`), after a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.LazyLinear(5)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1))


class PaddleLazy(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.bn = paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1))


def test_torch_lazy_modules_take_their_shapes_from_the_input_shape():
    pair = ModelPair.from_factories(f"{__name__}:TorchLazy", f"{__name__}:PaddleLazy", input_shape=(2, 3, 6, 6))
    model = pair.build("torch")
    assert tuple(model.fc.weight.shape) == (5, 64) and model.training and model.bn.training
    assert float(model.bn.running_var.sum()) == 4.0  # the shaping forward ran in eval mode: nothing moved
    cases = check_spec(pair)
    assert len(cases) == 5 and all(c.passed for c in cases), [c.worst for c in cases]


def test_torch_lazy_modules_without_an_input_shape_are_a_clear_error():
    pair = ModelPair.from_factories(f"{__name__}:TorchLazy", f"{__name__}:PaddleLazy")
    with pytest.raises(CrossattnError, match="lazy modules .* give --input-shape"):
        pair.build("torch")
