"""A running mean that is zero in exact arithmetic is judged against the spread of what it averages.

A bias-free convolution after a zero-bias BatchNorm (any model at its default
initialisation) gives the next BatchNorm a batch mean of exactly zero: both
sides' running means are then rounding noise (1e-18), which judged against
their own norm failed an equal pair (`check --weights`, `diff --mode train`).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from click.testing import CliRunner

import cli

HERE = "tests.test_running_mean_scale"


def torch_net(momentum: float = 0.1):
    return torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1, bias=False),
                               torch.nn.BatchNorm2d(4, momentum=momentum))


def paddle_net():
    return paddle.nn.Sequential(paddle.nn.BatchNorm2D(4), paddle.nn.Conv2D(4, 4, 1, bias_attr=False),
                                paddle.nn.BatchNorm2D(4))


def _default_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "init.pt"
    torch.save(torch_net().state_dict(), path)
    return path


def _run(command: str, torch_factory: str, *extra):
    return CliRunner().invoke(cli.cli, [command, "--torch-model", f"{HERE}:{torch_factory}", "--paddle-model",
                                        f"{HERE}:paddle_net", "--input-shape", "2,4,8,8", *map(str, extra)])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_at_its_default_initialisation_passes(tmp_path, dtype):
    result = _run("check", "torch_net", "--weights", _default_weights(tmp_path), "--dtype", dtype)
    assert result.exit_code == 0 and "6 passed, 0 failed" in result.output, result.output
    diff = _run("diff", "torch_net", "--weights", _default_weights(tmp_path), "--mode", "train", "--dtype", dtype)
    assert diff.exit_code == 0 and "no layer diverges" in diff.output, diff.output


class DriftingBatchNorm(torch.nn.BatchNorm2d):
    """Moves its running mean by 1e-7 more than torch's rule at each train-mode call."""

    def forward(self, x):
        out = super().forward(x)
        if self.training:  # a new tensor: the step's graph holds the old one
            self.running_mean = self.running_mean.detach() + 1e-7
        return out


def torch_drifting():
    return torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1, bias=False), DriftingBatchNorm(4))


def test_a_running_mean_off_by_1e_7_of_its_spread_still_fails(tmp_path):
    """The spread is the scale, not a floor that hides a wrong update: at the default initialisation (a batch
    mean of zero), a running mean 1e-7 from the rule fails."""
    result = _run("check", "torch_drifting", "--weights", _default_weights(tmp_path), "--mode", "train",
                  "--direction", "torch2paddle")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "2.running_mean" in result.output


def test_the_scale_is_the_spread_of_the_batches():
    from crossattn.check import running_stat_comparisons
    from crossattn.compare import compare
    from crossattn.tolerances import FLOAT64

    keys = {"mean": "bn.running_mean", "var": "bn.running_var"}
    start = {"bn.running_mean": np.zeros(3), "bn.running_var": np.ones(3)}
    calls = [(np.full(3, 1e-17), np.full(3, 4.0), 8)]  # a batch mean of rounding noise, variance 4
    after = {"bn.running_mean": np.full(3, 1e-18), "bn.running_var": 0.9 + 0.1 * np.full(3, 4.0 * 8 / 7)}

    def judged(name, category, candidate, reference, c64=None, r64=None, note="", scale=None):
        return compare(name, category, candidate, reference, FLOAT64, note, scale)

    rows = running_stat_comparisons("bn", keys, start, "torch", "torch", after, after, calls, judged)
    mean = next(r for r in rows if r.tensor == "bn.running_mean")
    assert mean.passed  # 1e-18 apart against a spread of about 1.1 per channel, not against 1e-18
