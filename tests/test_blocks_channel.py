"""Channel-attention twins (SE, ECA, CBAM, GCT): equivalent, right against numpy, and strict about options."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossattn import registry
from crossattn.blocks.cbam import CBAMOptions
from crossattn.blocks.eca import ECAOptions, adaptive_kernel_size
from crossattn.blocks.gct import GCTOptions
from crossattn.blocks.se import SEOptions, squeezed_channels
from crossattn.check import check_spec
from crossattn.errors import OptionError, SpecError
from crossattn.spec import Spec, load_spec, shipped_spec_paths
from tests.helpers import assert_twins_equivalent

TYPES = ("se", "eca", "cbam", "gct")
SHIPPED = [p for p in shipped_spec_paths("block") if p.stem.split("_")[0] in TYPES]


def _spec(type_name: str, options, input_shape: tuple[int, ...]) -> Spec:
    return Spec(type_name, options, name=f"{type_name}-{options}", input_shape=input_shape)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _torch_forward(spec: Spec, seed: int = 3, x: np.ndarray | None = None):
    """Torch twin in float64 with every weight random; returns (input, output, weights)."""
    import torch

    from crossattn.frameworks import adapter
    from crossattn.init import initial_state

    model = registry.build(spec, "torch").double()
    torch_adapter = adapter("torch")
    weights = initial_state(torch_adapter.slots(model), torch_adapter.state(model), "torch", seed, mode="check")
    torch_adapter.load_state(model, weights)
    if x is None:
        x = np.random.default_rng(1).standard_normal(spec.input_shape)
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).numpy(), weights


def _twins_on_input(spec: Spec, x: np.ndarray, seed: int = 0):
    """Both twins, same random weights, one train step on a chosen input (the check draws its own)."""
    from crossattn.frameworks import adapter
    from crossattn.init import initial_state
    from weight_transfer import transfer

    torch_adapter, paddle_adapter = adapter("torch"), adapter("paddle")
    torch_model = torch_adapter.to_dtype(registry.build(spec, "torch"), "float64")
    paddle_model = paddle_adapter.to_dtype(registry.build(spec, "paddle"), "float64")
    torch_slots = torch_adapter.slots(torch_model)
    weights = initial_state(torch_slots, torch_adapter.state(torch_model), "torch", seed, mode="check")
    paddle_weights, _ = transfer(weights, "torch", paddle_adapter.slots(paddle_model), "paddle")
    torch_adapter.load_state(torch_model, weights)
    paddle_adapter.load_state(paddle_model, paddle_weights)

    def cotangent(shape):
        return np.random.default_rng(7).standard_normal(shape)

    ref = torch_adapter.step(torch_model, x, cotangent, train=True)
    got = paddle_adapter.step(paddle_model, x, cotangent, train=True)
    got_grads, _ = transfer(got.param_grads, "paddle", torch_slots, "torch", complete=False)
    return ref, got, got_grads


# --- equivalence -------------------------------------------------------------------------------

def test_every_channel_block_has_shipped_specs():
    assert {p.stem.split("_")[0] for p in SHIPPED} == set(TYPES)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_twins_are_equivalent(path):
    cases = assert_twins_equivalent(load_spec(path))
    assert len(cases) == 5  # 2 directions x 2 modes + the large input probe


@pytest.mark.parametrize("type_name,options,shape", [
    ("se", SEOptions(channels=10, squeeze_channels=3), (2, 10, 4, 3)),
    ("se", SEOptions(channels=8, reduction=2, dimension=3, use_conv=True, gate="hard_sigmoid"), (2, 8, 2, 3, 3)),
    ("eca", ECAOptions(channels=9, dimension=1, gamma=1.0, b=0.0), (2, 9, 7)),
    ("cbam", CBAMOptions(channels=4, reduction=16, spatial_kernel=1), (2, 4, 3, 5)),
])
def test_option_variants_are_equivalent(type_name, options, shape):
    assert_twins_equivalent(_spec(type_name, options, shape))


def test_se_linear_weights_cross_transposed():
    from crossattn.frameworks import adapter

    spec = load_spec(next(p for p in SHIPPED if p.stem == "se_default"))
    torch_slots = adapter("torch").slots(registry.build(spec, "torch"))
    paddle_slots = adapter("paddle").slots(registry.build(spec, "paddle"))
    assert torch_slots["fc1.weight"].kind == paddle_slots["fc1.weight"].kind == "linear"
    assert torch_slots["fc1.weight"].shape == (2, 32)
    assert paddle_slots["fc1.weight"].shape == (32, 2)


def test_a_perturbed_gct_gamma_fails_and_is_named():
    def perturb(state):
        state["gamma"] = state["gamma"] + 1e-6

    spec = _spec("gct", GCTOptions(channels=8), (2, 8, 4, 4))
    cases = check_spec(spec, directions=("torch->paddle",), after_transfer=perturb)
    assert not any(c.passed for c in cases)
    assert "gamma.grad" in {c.tensor for case in cases for c in case.failures}


@pytest.mark.parametrize("options", [
    GCTOptions(channels=6, mode="l1"),
    GCTOptions(channels=6, mode="l1", after_relu=True),
    GCTOptions(channels=6, mode="l2"),
])
def test_gct_twins_agree_on_relu_output_with_exact_zeros(options):
    """A ReLU'd input has exact zeros, where |x| has a kink, and whole zero channels."""
    x = np.maximum(np.random.default_rng(2).standard_normal((2, 6, 4, 4)), 0.0)
    x[:, 0] = 0.0
    ref, got, got_grads = _twins_on_input(_spec("gct", options, x.shape), x)
    np.testing.assert_allclose(got.output, ref.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.input_grad, ref.input_grad, rtol=1e-12, atol=1e-12)
    for key, grad in ref.param_grads.items():
        np.testing.assert_allclose(got_grads[key], grad, rtol=1e-12, atol=1e-12, err_msg=key)


def test_cbam_twins_agree_on_tied_maxima():
    """Zero channels and zero positions tie the spatial and the channel-wise maximum."""
    x = np.maximum(np.random.default_rng(4).standard_normal((2, 8, 5, 5)), 0.0)
    x[:, 3] = 0.0
    x[:, :, 1, 2] = 0.0
    spec = _spec("cbam", CBAMOptions(channels=8, reduction=2, spatial_kernel=3), x.shape)
    ref, got, got_grads = _twins_on_input(spec, x)
    np.testing.assert_allclose(got.output, ref.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.input_grad, ref.input_grad, rtol=1e-12, atol=1e-12)
    for key, grad in ref.param_grads.items():
        np.testing.assert_allclose(got_grads[key], grad, rtol=1e-12, atol=1e-12, err_msg=key)


# --- primitive differences the twins work around (regressions) ---------------------------------

def test_paddle_adaptive_avg_pool_gradient_uses_a_float32_divisor():
    """Why the twins pool with a mean: paddle's AdaptiveAvgPool backward scales by float32(1/N)."""
    import paddle

    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 2, 6, 5)), stop_gradient=False)
    paddle.nn.AdaptiveAvgPool2D(1)(x).sum().backward()
    assert abs(float(x.grad.numpy()[0, 0, 0, 0]) * 30 - 1.0) > 1e-9
    y = paddle.to_tensor(x.numpy(), stop_gradient=False)
    y.mean(axis=(2, 3), keepdim=True).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), np.full((1, 2, 6, 5), 1.0 / 30))


def test_paddle_hardsigmoid_slope_is_float32_and_the_written_out_gate_is_exact():
    import paddle
    import torch

    from paddle_impl.blocks.se import apply_gate as paddle_gate
    from torch_impl.blocks.se import apply_gate as torch_gate

    x = np.array([-2.5, -1.0, 0.7, 2.9])
    exact = np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    builtin = paddle.nn.functional.hardsigmoid(paddle.to_tensor(x)).numpy()
    assert np.abs(builtin - exact).max() > 1e-8
    np.testing.assert_allclose(torch.nn.functional.hardsigmoid(torch.from_numpy(x)).numpy(), exact, rtol=1e-15)
    np.testing.assert_allclose(paddle_gate(paddle.to_tensor(x), "hard_sigmoid").numpy(), exact, rtol=1e-15)
    np.testing.assert_allclose(torch_gate(torch.from_numpy(x), "hard_sigmoid").numpy(), exact, rtol=1e-15)


def test_tied_max_gradient_differs_but_amax_agrees():
    import paddle
    import torch

    x = np.array([[1.0, 2.0, 2.0, 0.5]])
    t = torch.from_numpy(x).requires_grad_(True)
    torch.max(t, dim=1)[0].sum().backward()
    p = paddle.to_tensor(x, stop_gradient=False)
    paddle.max(p, axis=1).sum().backward()
    assert not np.array_equal(t.grad.numpy(), p.grad.numpy())
    t = torch.from_numpy(x).requires_grad_(True)
    torch.amax(t, dim=1).sum().backward()
    p = paddle.to_tensor(x, stop_gradient=False)
    paddle.amax(p, axis=1).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [[0.0, 0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(p.grad.numpy(), [[0.0, 0.5, 0.5, 0.0]])


def test_abs_gradient_at_zero_is_zero_in_both():
    import paddle
    import torch

    x = np.array([-1.5, 0.0, 2.0])
    t = torch.from_numpy(x).requires_grad_(True)
    torch.abs(t).sum().backward()
    p = paddle.to_tensor(x, stop_gradient=False)
    paddle.abs(p).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(p.grad.numpy(), [-1.0, 0.0, 1.0])


# --- right, not merely equal: torch twin against the formulas in numpy -------------------------

def _dense(weights, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A Linear or 1x1-conv layer as (W [out, in], b), torch layout."""
    w = weights[f"{name}.weight"]
    return w.reshape(w.shape[0], w.shape[1]), weights[f"{name}.bias"]


@pytest.mark.parametrize("options,shape", [
    (SEOptions(channels=16, reduction=4), (2, 16, 5, 3)),
    (SEOptions(channels=16, reduction=4, use_conv=True, gate="hard_sigmoid"), (2, 16, 4, 4)),
    (SEOptions(channels=24, rounding="round", dimension=3), (2, 24, 2, 3, 3)),
    (SEOptions(channels=6, reduction=2, dimension=1), (2, 6, 5)),
])
def test_se_matches_the_formula(options, shape):
    x, got, w = _torch_forward(_spec("se", options, shape))
    spatial = tuple(range(2, x.ndim))
    w1, b1 = _dense(w, "fc1")
    w2, b2 = _dense(w, "fc2")
    assert w1.shape == (options.squeeze, options.channels)
    logits = np.maximum(x.mean(axis=spatial) @ w1.T + b1, 0.0) @ w2.T + b2
    scale = np.clip(logits / 6.0 + 0.5, 0, 1) if options.gate == "hard_sigmoid" else _sigmoid(logits)
    np.testing.assert_allclose(got, x * scale.reshape(scale.shape + (1,) * len(spatial)), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("options", [
    GCTOptions(channels=5),
    GCTOptions(channels=5, mode="l1"),
    GCTOptions(channels=5, mode="l1", after_relu=True),
    GCTOptions(channels=5, epsilon=0.5),
])
def test_gct_matches_the_formula(options):
    x, got, w = _torch_forward(_spec("gct", options, (2, 5, 3, 4)))
    alpha, gamma, beta = w["alpha"], w["gamma"], w["beta"]
    eps = options.epsilon
    assert np.all(gamma != 0)
    if options.mode == "l2":
        embedding = alpha * np.sqrt((x ** 2).sum(axis=(2, 3), keepdims=True) + eps)
        norm = gamma / np.sqrt((embedding ** 2).mean(axis=1, keepdims=True) + eps)
    else:
        magnitude = x if options.after_relu else np.abs(x)
        embedding = alpha * magnitude.sum(axis=(2, 3), keepdims=True)
        norm = gamma / (np.abs(embedding).mean(axis=1, keepdims=True) + eps)
    np.testing.assert_allclose(got, x * (1.0 + np.tanh(embedding * norm + beta)), rtol=1e-12, atol=1e-13)


def test_gct_norm_is_the_papers_sqrt_c_over_l2_norm():
    """gamma / sqrt(mean_c s^2) is the paper's gamma * sqrt(C) / ||s||_2 (eps aside)."""
    options = GCTOptions(channels=7, epsilon=1e-300)
    x, got, w = _torch_forward(_spec("gct", options, (1, 7, 3, 3)))
    s = w["alpha"] * np.sqrt((x ** 2).sum(axis=(2, 3), keepdims=True))
    s_hat = math.sqrt(7) * s / np.linalg.norm(s)
    np.testing.assert_allclose(got, x * (1.0 + np.tanh(w["gamma"] * s_hat + w["beta"])), rtol=1e-12)


@pytest.mark.parametrize("options", [ECAOptions(channels=16), ECAOptions(channels=6, kernel_size=5)])
def test_eca_matches_the_formula(options):
    x, got, w = _torch_forward(_spec("eca", options, (2, options.channels, 3, 4)))
    kernel = w["conv.weight"].reshape(-1)
    assert kernel.size == options.kernel
    z = np.pad(x.mean(axis=(2, 3)), ((0, 0), (options.padding, options.padding)))
    logits = np.stack([z[:, c:c + options.kernel] @ kernel for c in range(options.channels)], axis=1)
    np.testing.assert_allclose(got, x * _sigmoid(logits)[:, :, None, None], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("options", [CBAMOptions(channels=8, reduction=4, spatial_kernel=3),
                                     CBAMOptions(channels=8, reduction=4, no_spatial=True)])
def test_cbam_matches_the_formula(options):
    x, got, w = _torch_forward(_spec("cbam", options, (2, 8, 5, 6)))
    w1, b1 = _dense(w, "channel_gate.fc1")
    w2, b2 = _dense(w, "channel_gate.fc2")

    def mlp(d):
        return np.maximum(d @ w1.T + b1, 0.0) @ w2.T + b2

    y = x * _sigmoid(mlp(x.mean(axis=(2, 3))) + mlp(x.max(axis=(2, 3))))[:, :, None, None]
    if not options.no_spatial:
        k, pad = options.spatial_kernel, options.spatial_padding
        maps = np.pad(np.stack([y.mean(axis=1), y.max(axis=1)], axis=1), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        kernel = w["spatial_gate.conv.weight"][0]  # (2, k, k): mean map first, then max map
        h, wd = y.shape[2:]
        logits = np.array([[[np.sum(maps[b, :, i:i + k, j:j + k] * kernel) for j in range(wd)] for i in range(h)]
                           for b in range(y.shape[0])])
        y = y * _sigmoid(logits)[:, None]
    np.testing.assert_allclose(got, y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_gct_starts_as_the_identity(framework):
    from crossattn.frameworks import adapter

    spec = _spec("gct", GCTOptions(channels=4), (2, 4, 3, 3))
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    out = adapter(framework).step(registry.build(spec, framework), x, lambda s: np.ones(s, np.float32), False).output
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("size", [(3, 3), (9, 4), (1, 1)])
def test_se_accepts_any_spatial_size(size):
    """The seed's fixed AvgPool sizes only fit one resolution; a global mean fits any."""
    spec = _spec("se", SEOptions(channels=8, reduction=2), (1, 8, *size))
    x, got, _ = _torch_forward(spec)
    assert got.shape == x.shape


# --- arithmetic shared by the twins -------------------------------------------------------------

@pytest.mark.parametrize("channels,rounding,expected", [
    (32, "floor", 2), (24, "floor", 1), (20, "floor", 1), (8, "floor", 1),
    (24, "round", 2),   # 1.5 -> 2
    (40, "round", 2),   # 2.5 -> 2: Python rounds halves to even
    (56, "round", 4),   # 3.5 -> 4
    (8, "round", 1),    # 0.5 -> 0, kept at 1
    (576, "round", 36), (64, "round", 4),  # seed 002's HybridSN widths
])
def test_squeeze_width(channels, rounding, expected):
    assert squeezed_channels(channels, 16, rounding) == expected
    assert SEOptions(channels=channels, rounding=rounding).squeeze == expected


@pytest.mark.parametrize("channels,expected", [
    (1, 1), (4, 1), (8, 3), (16, 3), (64, 3), (128, 5), (256, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_size(channels, expected):
    assert adaptive_kernel_size(channels) == expected
    assert ECAOptions(channels=channels).kernel == expected


def test_eca_kernel_size_matches_the_authors_formula():
    def authors(c: int) -> int:
        t = int(abs((math.log(c, 2) + 1) / 2))
        return t if t % 2 else t + 1

    assert all(adaptive_kernel_size(c) == authors(c) for c in range(1, 2 ** 16))


# --- option and spec validation -----------------------------------------------------------------

@pytest.mark.parametrize("cls,options,key", [
    (SEOptions, {"channels": 0}, "channels"),
    (SEOptions, {"channels": 16, "reduction": 0}, "reduction"),
    (SEOptions, {"channels": 16, "squeeze_channels": 4, "reduction": 8}, "reduction"),
    (SEOptions, {"channels": 16, "squeeze_channels": 4, "rounding": "round"}, "rounding"),
    (SEOptions, {"channels": 16, "rounding": "ceil"}, "rounding"),
    (SEOptions, {"channels": 16, "gate": "relu"}, "gate"),
    (SEOptions, {"channels": 16, "dimension": 4}, "dimension"),
    (SEOptions, {"channels": 16, "use_conv": "yes"}, "use_conv"),
    (ECAOptions, {"channels": 16, "kernel_size": 4}, "kernel_size"),
    (ECAOptions, {"channels": 16, "kernel_size": 0}, "kernel_size"),
    (ECAOptions, {"channels": 16, "kernel_size": 3, "gamma": 3.0}, "kernel_size"),
    (ECAOptions, {"channels": 16, "gamma": 0.0}, "gamma"),
    (CBAMOptions, {"channels": 16, "spatial_kernel": 6}, "spatial_kernel"),
    (CBAMOptions, {"channels": 16, "reduction": -2}, "reduction"),
    (CBAMOptions, {"channels": 1.5}, "channels"),
    (GCTOptions, {"channels": 16, "mode": "l3"}, "mode"),
    (GCTOptions, {"channels": 16, "after_relu": True}, "after_relu"),
    (GCTOptions, {"channels": 16, "epsilon": 0.0}, "epsilon"),
    (GCTOptions, {"channels": True}, "channels"),
])
def test_bad_options_name_the_key(cls, options, key):
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert info.value.key == key


@pytest.mark.parametrize("options,shape", [
    (SEOptions(channels=8, dimension=3), (2, 8, 4, 4)),
    (SEOptions(channels=8), (2, 6, 4, 4)),
    (ECAOptions(channels=8, dimension=1), (2, 8, 4, 4)),
    (CBAMOptions(channels=8), (2, 8, 2, 4, 4)),
    (GCTOptions(channels=8), (2, 4, 4, 4)),
])
def test_unfeedable_input_shape_is_rejected(options, shape):
    with pytest.raises(OptionError) as info:
        options.check_input_shape(shape)
    assert info.value.key == "input_shape"


@pytest.mark.parametrize("module", ["se", "eca", "cbam", "gct"])
def test_twin_constructors_validate_like_specs(module):
    bad = {"se": {"channels": 8, "gate": "tanh"}, "eca": {"channels": 8, "kernel_size": 2},
           "cbam": {"channels": 8, "spatial_kernel": 4}, "gct": {"channels": 8, "mode": "l3"}}[module]
    for framework in ("torch", "paddle"):
        with pytest.raises(OptionError):
            registry.twin_class(module, framework)(**bad)


def _write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_unknown_gct_mode_is_a_spec_error_naming_key_and_line(tmp_path):
    path = _write(tmp_path, "# GCT\ntype: gct\ninput_shape: [2, 8, 4, 4]\noptions:\n  channels: 8\n  mode: l3\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "options.mode"
    assert info.value.line == 6
    assert "'l1'" in info.value.message and "'l2'" in info.value.message


def test_even_cbam_kernel_is_a_spec_error(tmp_path):
    path = _write(tmp_path, "type: cbam\noptions:\n  channels: 8\n  spatial_kernel: 4\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.key, info.value.line) == ("options.spatial_kernel", 4)


def test_se_input_of_the_wrong_rank_is_a_spec_error(tmp_path):
    path = _write(tmp_path, "type: se\ninput_shape: [2, 8, 4, 4]\noptions:\n  channels: 8\n  dimension: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.key, info.value.line) == ("input_shape", 2)
