"""A user's BatchNorm momentum other than the default (MobileNetV3: torch 0.01, paddle 0.99): each side's running
statistics follow its own layer's momentum, and the two momenta must be counterparts."""

from __future__ import annotations

import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for


def torch_net(momentum: float | None = 0.01):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
                               torch.nn.BatchNorm2d(4, momentum=momentum), torch.nn.ReLU())


def paddle_net(momentum: float = 0.99):
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3, padding=1, bias_attr=False),
                                paddle.nn.BatchNorm2D(4, momentum=momentum), paddle.nn.ReLU())


def _train_cases(torch_momentum, paddle_momentum, dtype="float64"):
    pair = ModelPair.from_factories(f"{__name__}:torch_net", f"{__name__}:paddle_net",
                                    {"torch": {"momentum": torch_momentum}, "paddle": {"momentum": paddle_momentum}},
                                    input_shape=(2, 3, 6, 6))
    return check_spec(pair, modes=("train",), dtype=dtype, tol=tolerance_for(dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("torch_momentum, paddle_momentum", [(0.01, 0.99), (0.1, 0.9), (0.03, 0.97)])
def test_counterpart_momenta_pass(torch_momentum, paddle_momentum, dtype):
    cases = _train_cases(torch_momentum, paddle_momentum, dtype)
    assert len(cases) == 2 and all(c.passed for c in cases), [c.failures for c in cases]
    rows = {c.tensor: c for c in cases[0].comparisons}
    assert rows["1.momentum"].passed and rows["1.running_mean"].passed and rows["1.running_var [torch]"].passed
    assert f"torch momentum {torch_momentum:g} = paddle momentum {paddle_momentum:g}" in rows["1.momentum"].note


@pytest.mark.parametrize("torch_momentum, paddle_momentum, said", [
    (0.01, 0.01, "its counterpart of torch's 0.01 is 0.99"),  # paddle's momentum weighs the running value
    (0.1, 0.99, "its counterpart of torch's 0.1 is 0.9"),
    (None, 0.9, "torch's cumulative average (momentum None) has no paddle counterpart"),
])
def test_momenta_that_are_not_counterparts_fail(torch_momentum, paddle_momentum, said):
    first = _train_cases(torch_momentum, paddle_momentum)[0]
    assert [c.tensor for c in first.failures] == ["1.momentum"], first.failures  # each side follows its own rule
    assert said in first.failures[0].note
