"""torch's float64 convolutions in channels-last layout: the same values, the usual layout outside, only where faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_impl import float64_conv
from torch_impl.float64_conv import channels_last_convs


class _Head(nn.Module):
    """Convolutions at 3x3 positions, then reshapes that need the usual contiguous layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv2 = nn.Conv2d(128, 32, 1)
        self.fc = nn.Linear(32 * 9, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y.view(y.shape[0], -1))  # view: fails on a channels-last tensor of 3x3 positions


def _step(model: nn.Module, x: np.ndarray, fast: bool) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    inputs = torch.from_numpy(x).requires_grad_(True)
    model.zero_grad(set_to_none=True)
    if fast:
        with channels_last_convs():
            out = model(inputs)
    else:
        out = model(inputs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return out.detach().numpy().copy(), inputs.grad.numpy().copy(), \
        {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}


def test_same_values_and_the_usual_layout_outside():
    torch.manual_seed(0)
    model = _Head().double()
    x = np.random.default_rng(0).standard_normal((2, 64, 3, 3))
    plain, fast = _step(model, x, False), _step(model, x, True)
    for a, b in [(plain[0], fast[0]), (plain[1], fast[1])] + [(plain[2][k], fast[2][k]) for k in plain[2]]:
        assert np.linalg.norm(a - b) <= 1e-13 * np.linalg.norm(a)  # float64 sums in another order
    assert all(g.flags.c_contiguous for g in fast[2].values())
    assert fast[1].flags.c_contiguous


def test_convolutions_run_channels_last_only_where_measured_faster(monkeypatch):
    seen = []
    real = float64_conv._faster_channels_last

    def recording(x, weight, groups):
        chosen = real(x, weight, groups)
        seen.append((tuple(x.shape), tuple(weight.shape), groups, x.dtype, chosen))
        return chosen

    monkeypatch.setattr(float64_conv, "_faster_channels_last", recording)
    cases = [  # (input, weight, groups, expected)
        ((2, 256, 3, 3), (256, 256, 3, 3), 1, True),    # a ResNet's last stages: skinny products
        ((2, 1024, 5, 5), (256, 1024, 1, 1), 1, True),
        ((2, 256, 6, 6), (256, 256, 3, 3), 1, False),   # 36 positions: no faster
        ((2, 3, 4, 4), (64, 3, 3, 3), 1, False),        # 27 products per value: conversion costs more
        ((2, 64, 3, 3), (64, 1, 3, 3), 64, False),      # depthwise
    ]
    for x_shape, w_shape, groups, expected in cases:
        x, w = torch.randn(x_shape, dtype=torch.float64), torch.randn(w_shape, dtype=torch.float64)
        with channels_last_convs():
            out = F.conv2d(x, w, None, 1, w_shape[-1] // 2, 1, groups)
        assert out.is_contiguous()
        torch.testing.assert_close(out, F.conv2d(x, w, None, 1, w_shape[-1] // 2, 1, groups), rtol=1e-13, atol=1e-12)
        assert seen[-1][-1] is expected, (x_shape, w_shape)
    with channels_last_convs():  # float32 runs oneDNN's kernel, as the user's model does: never converted
        F.conv2d(torch.randn(2, 256, 3, 3), torch.randn(256, 256, 3, 3), padding=1)
    assert seen[-1][-1] is False and seen[-1][3] == torch.float32


@pytest.mark.parametrize("spec_name", ["resnet18_baseline"])
def test_the_torch_adapter_step_uses_it_in_float64_and_check_still_passes(spec_name, monkeypatch):
    from crossattn.check import check_spec
    from crossattn.spec import load_spec, resolve_spec

    converted = []
    real = float64_conv._faster_channels_last
    monkeypatch.setattr(float64_conv, "_faster_channels_last",
                        lambda x, w, g: converted.append(real(x, w, g)) or converted[-1])
    cases = check_spec(load_spec(resolve_spec(spec_name)), directions=("torch->paddle",), modes=("eval",),
                       probes=())
    assert cases and all(c.passed for c in cases)
    assert any(converted) and not all(converted)  # the last stages only
