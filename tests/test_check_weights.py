"""`check --weights`: a check that starts from a user's checkpoint. Trained statistics reach a saturated
activation that drawn weights do not in eval mode: ReLU in place of ReLU6 after a BatchNorm passes the eval
cases on drawn weights (their train cases fail it) and fails from the checkpoint; the equal pair passes from
it, from either framework's file."""

from __future__ import annotations

import paddle
import pytest
import torch
from click.testing import CliRunner

import cli
from crossattn.errors import CrossattnError

HERE = "tests.test_check_weights"


class TorchNet(torch.nn.Module):
    def __init__(self, six: bool = True) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6())
        self.conv = torch.nn.Conv2d(8, 8, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU6() if six else torch.nn.ReLU()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(self.stem(x)))).mean((2, 3)))


class PaddleNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.stem = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.ReLU6())
        self.conv = paddle.nn.Conv2D(8, 8, 1, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.act = paddle.nn.ReLU6()
        self.fc = paddle.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(self.stem(x)))).mean((2, 3)))


def torch_relu():
    return TorchNet(six=False)


def _trained(tmp_path, framework: str):
    """A state as training leaves it: small running variances, larger scales."""
    torch.manual_seed(0)
    model = TorchNet()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.005, 0.02)
        model.bn.weight.uniform_(1.5, 2.5)
    if framework == "torch":
        path = tmp_path / "trained.pt"
        torch.save(model.state_dict(), path)
        return path
    twin = PaddleNet()
    state = {k.replace("running_mean", "_mean").replace("running_var", "_variance"): v.numpy()
             for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: (v.T if k == "fc.weight" else v) for k, v in state.items()}
    twin.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    path = tmp_path / "trained.pdparams"
    paddle.save(twin.state_dict(), str(path))
    return path


def _check(torch_factory: str, *extra):
    return CliRunner().invoke(cli.cli, ["check", "--torch-model", f"{HERE}:{torch_factory}", "--paddle-model",
                                        f"{HERE}:PaddleNet", "--input-shape", "2,3,2,2", *map(str, extra)])


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_the_equal_pair_passes_from_either_frameworks_checkpoint(tmp_path, framework):
    result = _check("TorchNet", "--weights", _trained(tmp_path, framework))
    assert result.exit_code == 0, result.output
    assert "6 passed, 0 failed" in result.output
    assert f"started from --weights {tmp_path}" in result.output and f"({framework} naming" in result.output


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_drawn_weights_reach_the_clip_after_a_batchnorm_in_train_mode(dtype):
    """A check's BatchNorm weights reach up to 8 (`init.BN_WEIGHT_RANGE`): a train-mode BatchNorm's output then
    passes ReLU6's clip; in eval mode the stem's ReLU6 bounds what reaches it, so the eval cases pass."""
    assert _check("torch_relu", "--dtype", dtype, "--mode", "eval").exit_code == 0
    train = _check("torch_relu", "--dtype", dtype, "--mode", "train")
    assert train.exit_code == 1 and "0 passed, 2 failed" in train.output, train.output


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_saturation_only_trained_weights_reach_fails_from_them(tmp_path, dtype):
    drawn = _check("torch_relu", "--dtype", dtype, "--mode", "eval")
    assert drawn.exit_code == 0, drawn.output  # what drawn weights cannot show in eval mode (docs/equivalence.md)
    trained = _check("torch_relu", "--dtype", dtype, "--mode", "eval", "--weights", _trained(tmp_path, "torch"))
    assert trained.exit_code == 1 and "0 failed" not in trained.output, trained.output


def _refusal(result) -> str:
    """A user mistake: a CrossattnError (`crossattn` prints it as one paragraph and exits 2), no traceback."""
    assert isinstance(result.exception, CrossattnError), result.output + repr(result.exception)
    return str(result.exception)


def test_bad_weights_are_refused_in_one_paragraph(tmp_path):
    assert "none.pt: no such file" in _refusal(_check("TorchNet", "--weights", tmp_path / "none.pt"))
    torch.save({"conv.weight": torch.zeros(8, 8, 1, 1)}, tmp_path / "partial.pt")
    assert "missing `stem.0.bias` (torch shape [8])" in _refusal(_check("TorchNet", "--weights", tmp_path / "partial.pt"))
    state = TorchNet().state_dict()
    state["fc.bias"] = torch.full((4,), float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    assert "non-finite" in _refusal(_check("TorchNet", "--weights", tmp_path / "nan.pt"))
    both = CliRunner().invoke(cli.cli, ["check", "se_default", "eca_default", "--weights", str(tmp_path / "nan.pt")])
    assert "give one spec or your own pair, not 2" in _refusal(both)
    assert "--trust-pickle applies" in _refusal(_check("TorchNet", "--trust-pickle"))


def test_diff_from_the_checkpoint_names_the_layer(tmp_path):
    result = CliRunner().invoke(cli.cli, ["diff", "--torch-model", f"{HERE}:torch_relu", "--paddle-model",
                                          f"{HERE}:PaddleNet", "--input-shape", "2,3,2,2", "--probe", "large",
                                          "--weights", str(_trained(tmp_path, "paddle"))])
    assert result.exit_code == 1, result.output
    assert "forward error first appears in `act`" in result.output
    drawn = CliRunner().invoke(cli.cli, ["diff", "--torch-model", f"{HERE}:torch_relu", "--paddle-model",
                                         f"{HERE}:PaddleNet", "--input-shape", "2,3,2,2", "--probe", "large"])
    assert drawn.exit_code == 0, drawn.output
