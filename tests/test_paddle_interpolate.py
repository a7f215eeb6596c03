"""paddle resamples float64 tensors by float32 coordinates: torch's float64 `F.interpolate`, inside a comparison,
takes paddle's weights (forward and backward), so an equal pair passes; a different resampling still fails."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

from crossattn.check import check_spec
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for
from torch_impl import comparison_calls
from torch_impl.paddle_interpolate import interpolate_as_paddle

FLOAT64 = tolerance_for("float64")
LAYOUTS = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
MODES = [("linear", 1), ("bilinear", 2), ("bicubic", 2), ("trilinear", 3)]
#: (input sizes, size=..., scale_factor=...) per axis, the first `axes` of each taken: non-integer ratios, down- and
#: upsampling, unequal axes, one axis kept
RESIZES = [((10, 7, 6), (17, 12, 9), None), ((9, 6, 5), (4, 6, 8), None), ((10, 8, 6), None, (1.7, 1.25, 1.5)),
           ((7, 7, 7), None, (0.75, 0.75, 0.75)), ((5, 6, 4), (13, 20, 7), None)]


def _norm_rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def _paddle(x: np.ndarray, cotangent_seed: int, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs = paddle.to_tensor(x, stop_gradient=False)
    y = paddle.nn.functional.interpolate(inputs, data_format=LAYOUTS[x.ndim - 2], **options)
    cotangent = np.random.default_rng(cotangent_seed).standard_normal(y.shape)
    (y * paddle.to_tensor(cotangent)).sum().backward()
    return y.numpy(), inputs.grad.numpy(), cotangent


def _torch(x: np.ndarray, cotangent: np.ndarray, call) -> tuple[np.ndarray, np.ndarray]:
    inputs = torch.from_numpy(x).requires_grad_(True)
    y = call(inputs)
    (y * torch.from_numpy(cotangent)).sum().backward()
    return y.detach().numpy(), inputs.grad.numpy()


def _options(axes: int, size, scale, mode: str, align: bool) -> dict:
    first = (lambda v: None if v is None else list(v[:axes]))
    return dict(size=first(size), scale_factor=first(scale), mode=mode, align_corners=align)


@pytest.mark.parametrize("align", [False, True], ids=["half_pixel", "align_corners"])
@pytest.mark.parametrize("mode,axes", MODES, ids=[m for m, _ in MODES])
def test_torch_takes_paddles_weights_forward_and_backward(mode, axes, align):
    rng = np.random.default_rng(0)
    apart = 0.0
    for index, (in_sizes, size, scale) in enumerate(RESIZES):
        shape = (2, 3, *in_sizes[:axes])
        x = rng.standard_normal(shape)
        options = _options(axes, size, scale, mode, align)
        want, want_grad, cotangent = _paddle(x, index, **options)
        rounded: set[str] = set()
        got, got_grad = _torch(x, cotangent, lambda t: interpolate_as_paddle((t,), dict(options), rounded))
        for have, expected in ((got, want), (got_grad, want_grad)):
            assert have.shape == expected.shape
            assert np.abs(have - expected).max() <= FLOAT64.atol + FLOAT64.rtol * np.abs(expected).max()
            assert _norm_rel(have, expected) <= FLOAT64.rtol
        assert rounded == {f"{mode} interpolation takes paddle's weights (float32 coordinates)"}
        own, own_grad = _torch(x, cotangent, lambda t: F.interpolate(t, **options))
        apart = max(apart, _norm_rel(own, want), _norm_rel(own_grad, want_grad))
    assert 1e-8 < apart < 1e-5  # torch's own float64 coordinates: float32-sized differences, over the tolerance


@pytest.mark.parametrize("options", [
    dict(size=1, mode="bilinear", align_corners=False),  # paddle takes the first pixel, torch the centre
    dict(scale_factor=1.3, mode="bilinear", recompute_scale_factor=True),  # torch steps by in/out
    dict(size=(17, 17), mode="bilinear", antialias=True),  # paddle has no antialias
    dict(size=(17, 17), mode="nearest"),
])
def test_calls_where_paddle_differs_in_exact_arithmetic_are_left_alone(options):
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 2, 10, 10)))
    rounded: set[str] = set()
    torch.testing.assert_close(interpolate_as_paddle((x,), dict(options), rounded), F.interpolate(x, **options),
                               rtol=0, atol=0)
    assert not rounded


def test_float32_is_left_to_torch():
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 2, 10, 10)).astype(np.float32))
    rounded: set[str] = set()
    options = dict(size=(17, 17), mode="bilinear", align_corners=False)
    torch.testing.assert_close(interpolate_as_paddle((x,), dict(options), rounded), F.interpolate(x, **options),
                               rtol=0, atol=0)
    assert not rounded


class TorchNet(torch.nn.Module):
    """A decoder-like model: features at a lower resolution, resampled to an odd size and fused."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = torch.nn.Upsample(size=(15, 15), mode="bilinear", align_corners=False)
        self.head = torch.nn.Conv2d(9, 4, 1)

    def forward(self, x):
        y = self.up(torch.relu(self.down(x)))
        x = F.interpolate(x, size=(15, 15), mode="bicubic", align_corners=True)
        return self.head(torch.cat([x, y], 1))


class PaddleNet(paddle.nn.Layer):
    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.down = paddle.nn.Conv2D(3, 6, 3, stride=2, padding=1)
        self.head = paddle.nn.Conv2D(9, 4, 1)
        self.align_corners = align_corners

    def forward(self, x):
        Fp = paddle.nn.functional
        y = Fp.interpolate(Fp.relu(self.down(x)), size=(15, 15), mode="bilinear", align_corners=self.align_corners)
        x = Fp.interpolate(x, size=(15, 15), mode="bicubic", align_corners=True)
        return self.head(paddle.concat([x, y], 1))


def _pair(**paddle_args) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchNet", f"{__name__}:PaddleNet",
                                    {"torch": {}, "paddle": paddle_args}, input_shape=(2, 3, 11, 11))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pair_that_resamples_passes_and_says_so(dtype):
    cases = check_spec(_pair(), dtype=dtype, tol=tolerance_for(dtype))
    assert len(cases) == 6 and all(c.passed for c in cases), [c.worst for c in cases]
    notes = " ".join(cases[0].notes)
    assert "bilinear interpolation takes paddle's weights" in notes and "bicubic interpolation" in notes


def test_torchs_own_coordinates_fail_the_float64_check(monkeypatch):
    monkeypatch.setattr(comparison_calls, "interpolate_as_paddle", lambda args, kwargs, rounded: F.interpolate(
        *args, **kwargs))
    cases = check_spec(_pair(), modes=("eval",), probes=())
    assert cases and not any(c.passed for c in cases)
    assert all(c.worst.norm_rel < 1e-5 for c in cases)  # float32-sized coordinate differences, nothing more


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_different_resampling_fails(dtype):
    """The paddle side aligns corners where the torch side does not: a different model, in either dtype."""
    cases = check_spec(_pair(align_corners=True), dtype=dtype, tol=tolerance_for(dtype), modes=("eval",), probes=())
    assert cases and not any(c.passed for c in cases)
