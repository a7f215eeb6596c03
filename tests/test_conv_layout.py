"""torch convolutions in channels-last layout: the same values, the usual layout outside, only where faster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_impl import conv_layout
from torch_impl.conv_layout import channels_last_convs


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


def _recording(monkeypatch) -> list:
    seen = []
    real = conv_layout._faster_channels_last

    def recording(x, weight, groups, *args):
        chosen = real(x, weight, groups, *args)
        seen.append((tuple(x.shape), tuple(weight.shape), groups, x.dtype, chosen))
        return chosen

    monkeypatch.setattr(conv_layout, "_faster_channels_last", recording)
    return seen


def _conv_cases(seen: list, dtype: torch.dtype, cases: list) -> None:
    for x_shape, w_shape, groups, stride, expected in cases:
        x, w = torch.randn(x_shape, dtype=dtype), torch.randn(w_shape, dtype=dtype)
        with channels_last_convs():
            out = F.conv2d(x, w, None, stride, w_shape[-1] // 2, 1, groups)
        assert out.is_contiguous()
        plain = F.conv2d(x, w, None, stride, w_shape[-1] // 2, 1, groups)
        if dtype == torch.float64:
            torch.testing.assert_close(out, plain, rtol=1e-13, atol=1e-12)
        else:  # float32 sums in another order: rounding of the reduction's length
            assert float((out - plain).norm()) <= 1e-5 * float(plain.norm())
        assert seen[-1][-1] is expected, (dtype, x_shape, w_shape, stride)


def test_float64_convolutions_run_channels_last_only_where_measured_faster(monkeypatch):
    seen = _recording(monkeypatch)
    _conv_cases(seen, torch.float64, [  # (input, weight, groups, stride, expected)
        ((2, 256, 3, 3), (256, 256, 3, 3), 1, 1, True),    # a ResNet's last stages: skinny products
        ((2, 1024, 5, 5), (256, 1024, 1, 1), 1, 1, True),
        ((2, 256, 6, 6), (256, 256, 3, 3), 1, 1, False),   # 36 positions: no faster
        ((2, 3, 4, 4), (64, 3, 3, 3), 1, 1, False),        # 27 products per value: conversion costs more
        ((2, 64, 3, 3), (64, 1, 3, 3), 64, 1, False),      # depthwise
    ])


def test_float32_only_the_unfolded_one_by_one_convolutions_are_converted(monkeypatch):
    seen = _recording(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _conv_cases(seen, torch.float32, [
            ((2, 1024, 3, 3), (256, 1024, 1, 1), 1, 1, True),   # unfolded per sample: 0.26x in channels-last
            ((2, 128, 2, 2), (128, 128, 1, 1), 1, 1, True),
            ((2, 512, 6, 6), (512, 512, 1, 1), 1, 1, True),     # a large layer up to 6x6
            ((2, 256, 4, 4), (256, 256, 1, 1), 1, 1, False),    # 4x4, 256x256: no faster
            ((2, 64, 3, 3), (256, 64, 1, 1), 1, 1, False),      # few input channels
            ((2, 1024, 1, 1), (256, 1024, 1, 1), 1, 1, False),  # one position: the same product either way
            ((2, 256, 3, 3), (256, 256, 3, 3), 1, 1, False),    # 3x3: oneDNN's kernel already
            ((2, 1024, 6, 6), (2048, 1024, 1, 1), 1, 2, False),  # strided: oneDNN's kernel already
            ((16, 1024, 3, 3), (256, 1024, 1, 1), 1, 1, False),  # batch of 16: oneDNN's kernel already
        ])
        torch.set_num_threads(2)  # torch then runs every float32 conv in oneDNN
        _conv_cases(seen, torch.float32, [((2, 1024, 3, 3), (256, 1024, 1, 1), 1, 1, False)])
    finally:
        torch.set_num_threads(threads)


def test_float32_values_and_layout(monkeypatch):
    seen = _recording(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = _Head()
        x = np.random.default_rng(0).standard_normal((2, 64, 3, 3)).astype(np.float32)
        model.conv2 = nn.Conv2d(128, 32, 1)  # 128 channels at 3x3 positions: converted
        plain, fast = _step(model, x, False), _step(model, x, True)
    finally:
        torch.set_num_threads(threads)
    for a, b in [(plain[0], fast[0]), (plain[1], fast[1])] + [(plain[2][k], fast[2][k]) for k in plain[2]]:
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)
    assert all(g.flags.c_contiguous for g in fast[2].values())
    assert [chosen for *_, chosen in seen] == [False, True]  # the 3x3 conv is oneDNN's already; the 1x1 is not


@pytest.mark.parametrize("spec_name, dtype", [("resnet18_baseline", "float64"), ("se_resnet50", "float32")])
def test_the_torch_adapter_step_uses_it_and_check_still_passes(spec_name, dtype, monkeypatch):
    from crossattn.check import check_spec
    from crossattn.spec import load_spec, resolve_spec

    converted = []
    real = conv_layout._faster_channels_last
    monkeypatch.setattr(conv_layout, "_faster_channels_last",
                        lambda *args: converted.append(real(*args)) or converted[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in check's worker processes
    try:
        cases = check_spec(load_spec(resolve_spec(spec_name)), directions=("torch->paddle",), modes=("eval",),
                           probes=(), dtype=dtype)
    finally:
        torch.set_num_threads(threads)
    assert cases and all(c.passed for c in cases)
    assert any(converted) and not all(converted)  # the last stages only
