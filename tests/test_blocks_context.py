"""Global context and strip pooling twins: equivalent, right against references, and the
primitive differences (paddle's bilinear interpolate and adaptive pooling) pinned."""

from __future__ import annotations

import numpy as np
import pytest

from crossattn import registry
from crossattn.blocks.global_context import GlobalContextOptions
from crossattn.blocks.strip_pooling import MixedPoolingOptions, StripPoolingOptions
from crossattn.resample import adaptive_bin, adaptive_pool_matrix, bilinear_matrix
from crossattn.check import check_spec
from crossattn.conventions import LN_EPSILON
from crossattn.errors import OptionError, SpecError
from crossattn.frameworks import adapter
from crossattn.init import initial_state
from crossattn.spec import Spec, load_spec, shipped_spec_paths
from tests.helpers import assert_twins_equivalent

SHIPPED = [p for p in shipped_spec_paths("block")
           if p.stem.startswith(("global_context_", "strip_pooling_", "mixed_pooling_"))]


def _randomised_torch_twin(spec: Spec, seed: int = 3):
    """The torch twin in float64 with every tensor random (zero-initialised layers included)."""
    model = registry.build(spec, "torch").double()
    torch_adapter = adapter("torch")
    weights = initial_state(torch_adapter.slots(model), torch_adapter.state(model), "torch", seed, mode="check")
    torch_adapter.load_state(model, weights)
    return model, {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}


# --- equivalence -------------------------------------------------------------------------------

def test_every_variant_ships_a_spec():
    names = {p.stem for p in SHIPPED}
    assert {"global_context_add", "global_context_mul", "global_context_add_mul", "global_context_avg",
            "strip_pooling_gate", "mixed_pooling_align_corners_false",
            "mixed_pooling_align_corners_true"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_twins_are_equivalent(path):
    cases = assert_twins_equivalent(load_spec(path))
    assert len(cases) == 5  # 2 directions x 2 modes + the large input probe


def test_fusion_order_in_options_does_not_change_the_block():
    import torch

    a = Spec("global_context", GlobalContextOptions(in_channels=8, reduction=2, fusions=("add", "mul")))
    b = Spec("global_context", GlobalContextOptions(in_channels=8, reduction=2, fusions=("mul", "add")))
    model_a, weights = _randomised_torch_twin(a)
    model_b = registry.build(b, "torch").double()
    adapter("torch").load_state(model_b, weights)
    x = torch.tensor(np.random.default_rng(0).standard_normal((2, 8, 3, 5)))
    with torch.no_grad():
        torch.testing.assert_close(model_a(x), model_b(x), rtol=0, atol=0)


# --- global context: right, not only equal ---------------------------------------------------------

def _numpy_global_context(x: np.ndarray, w: dict[str, np.ndarray], opts: GlobalContextOptions) -> np.ndarray:
    """The block straight from the paper's formulas."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    if opts.pooling == "attention":
        logits = np.einsum("c,bcn->bn", w["key.weight"].reshape(c), flat) + w["key.bias"][0]
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = np.einsum("bcn,bn->bc", flat, weights)
    else:
        context = flat.mean(-1)

    def transform(prefix: str) -> np.ndarray:
        h = context @ w[f"{prefix}.0.weight"][:, :, 0, 0].T + w[f"{prefix}.0.bias"]
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)  # over all of [C/r, 1, 1]
        h = (h - mean) / np.sqrt(var + LN_EPSILON) * w[f"{prefix}.1.weight"].ravel() + w[f"{prefix}.1.bias"].ravel()
        h = np.maximum(h, 0)
        return (h @ w[f"{prefix}.3.weight"][:, :, 0, 0].T + w[f"{prefix}.3.bias"])[:, :, None, None]

    out = x
    if opts.fuses_mul:
        out = out / (1 + np.exp(-transform("transform_mul")))
    if opts.fuses_add:
        out = out + transform("transform_add")
    return out


@pytest.mark.parametrize("pooling", ["attention", "avg"])
@pytest.mark.parametrize("fusions", [("add",), ("mul",), ("add", "mul")])
def test_global_context_torch_twin_matches_numpy(pooling, fusions):
    import torch

    opts = GlobalContextOptions(in_channels=6, reduction=2, pooling=pooling, fusions=fusions)
    model, weights = _randomised_torch_twin(Spec("global_context", opts))
    x = np.random.default_rng(1).standard_normal((2, 6, 3, 4))
    with torch.no_grad():
        got = model(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, _numpy_global_context(x, weights, opts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_global_context_starts_as_identity(framework):
    spec = Spec("global_context", GlobalContextOptions(in_channels=8, reduction=2, fusions=("add",)))
    model = registry.build(spec, framework)
    fw = adapter(framework)
    state = initial_state(fw.slots(model), fw.state(model), framework, seed=0, mode="default")
    assert not state["transform_add.3.weight"].any() and not state["transform_add.3.bias"].any()
    fw.load_state(model, state)
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
    result = fw.step(model, x, lambda s: np.ones(s, np.float32), train=False)
    np.testing.assert_array_equal(result.output, x)


def test_seed003_variant_is_not_identity():
    import torch

    spec = Spec("global_context", GlobalContextOptions(in_channels=8, reduction=2, zero_init_last=False))
    model = registry.build(spec, "torch")
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert (model(x) - x).abs().max() > 1e-4


def test_layer_norm_covers_the_whole_context_vector_in_both_frameworks():
    """LayerNorm([C/r, 1, 1]): torch keeps [C/r, 1, 1] weights, paddle flattened [C/r]; both
    normalise over all C/r values of a sample (not per channel, which would give zeros)."""
    import paddle
    import torch

    from paddle_impl.layers import layer_norm as paddle_layer_norm
    from torch_impl.layers import layer_norm as torch_layer_norm

    shape = [5, 1, 1]
    rng = np.random.default_rng(0)
    x, gamma, beta = rng.standard_normal((3, 5, 1, 1)), rng.uniform(0.5, 1.5, 5), rng.uniform(-0.5, 0.5, 5)
    expected = ((x - x.mean((1, 2, 3), keepdims=True)) / np.sqrt(x.var((1, 2, 3), keepdims=True) + LN_EPSILON)
                * gamma[:, None, None] + beta[:, None, None])
    t = torch_layer_norm(shape).double()
    p = paddle_layer_norm(shape)
    p.to(dtype="float64")
    assert tuple(t.weight.shape) == (5, 1, 1) and tuple(p.weight.shape) == (5,)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(gamma).reshape(shape))
        t.bias.copy_(torch.tensor(beta).reshape(shape))
        torch_out = t(torch.tensor(x)).numpy()
    p.weight.set_value(paddle.to_tensor(gamma))
    p.bias.set_value(paddle.to_tensor(beta))
    np.testing.assert_allclose(torch_out, expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(p(paddle.to_tensor(x)).numpy(), expected, rtol=1e-13, atol=1e-13)


def test_layer_norm_weights_transfer_flattened():
    from weight_transfer import transfer

    spec = Spec("global_context", GlobalContextOptions(in_channels=8, reduction=2))
    torch_model, weights = _randomised_torch_twin(spec)
    paddle_model = adapter("paddle").to_dtype(registry.build(spec, "paddle"), "float64")
    moved, _ = transfer(weights, "torch", adapter("paddle").slots(paddle_model), "paddle")
    assert moved["transform_add.1.weight"].shape == (4,)
    np.testing.assert_array_equal(moved["transform_add.1.weight"], weights["transform_add.1.weight"].ravel())
    back, _ = transfer(moved, "paddle", adapter("torch").slots(torch_model), "torch")
    np.testing.assert_array_equal(back["transform_add.1.weight"], weights["transform_add.1.weight"])


# --- strip pooling: the twins follow the paper's code, written with torch's own operators -------

def _reference_strip_pooling(model, x):
    """SPNet's SP block: adaptive pools to Hx1 / 1xW, 1-D convs + BN, expand, ReLU, conv, sigmoid."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    strip_h = model.strip_h(F.adaptive_avg_pool2d(x, (None, 1))).expand(-1, -1, h, w)
    strip_w = model.strip_w(F.adaptive_avg_pool2d(x, (1, None))).expand(-1, -1, h, w)
    return x * model.fuse(F.relu(strip_h + strip_w)).sigmoid()


def _reference_mixed_pooling(model, x):
    """SPNet's mixed pooling module with torch's adaptive pooling and interpolate."""
    import torch
    import torch.nn.functional as F

    opts = model.options
    size = x.shape[2:]
    up = {"mode": "bilinear", "align_corners": opts.align_corners}
    x1, x2 = model.reduce_square(x), model.reduce_strip(x)
    square = model.local(x1)
    for pool, branch in zip(opts.pool_sizes, model.pyramid):
        square = square + F.interpolate(branch(F.adaptive_avg_pool2d(x1, pool)), size, **up)
    strip_w = F.interpolate(model.strip_w(F.adaptive_avg_pool2d(x2, (1, None))), size, **up)
    strip_h = F.interpolate(model.strip_h(F.adaptive_avg_pool2d(x2, (None, 1))), size, **up)
    square = model.fuse_square(F.relu(square))
    strip = model.fuse_strip(F.relu(strip_h + strip_w))
    return F.relu(x + model.project(torch.cat([square, strip], dim=1)))


@pytest.mark.parametrize("spec,reference", [
    (Spec("strip_pooling", StripPoolingOptions(in_channels=6, mid_channels=4)), _reference_strip_pooling),
    (Spec("strip_pooling", StripPoolingOptions(in_channels=6, output_bn=True)), _reference_strip_pooling),
    (Spec("mixed_pooling", MixedPoolingOptions(in_channels=8, align_corners=False)), _reference_mixed_pooling),
    (Spec("mixed_pooling", MixedPoolingOptions(in_channels=8, align_corners=True)), _reference_mixed_pooling),
    (Spec("mixed_pooling", MixedPoolingOptions(in_channels=8, pool_sizes=(4, 3, 1))), _reference_mixed_pooling),
], ids=["sp", "sp-bn", "mpm", "mpm-corners", "mpm-coarse"])
def test_torch_twin_matches_the_papers_code(spec, reference):
    import torch

    model, _ = _randomised_torch_twin(spec)
    model.eval()
    x = torch.tensor(np.random.default_rng(2).standard_normal((2, spec.options.in_channels, 9, 7)))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model, x), rtol=1e-12, atol=1e-12)


# --- primitive differences, pinned ---------------------------------------------------------------

RESIZES = [(5, 8), (7, 11), (12, 9), (20, 7), (3, 8), (1, 6), (6, 1), (9, 9)]
POOLS = [(9, 4), (7, 3), (8, 20), (9, 12), (7, 5), (6, 6)]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_size,out_size", RESIZES)
def test_bilinear_matrix_is_torch_interpolate(in_size, out_size, align_corners):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).standard_normal((1, 2, in_size, 3))
    expected = F.interpolate(torch.tensor(x), (out_size, 3), mode="bilinear", align_corners=align_corners).numpy()
    got = np.einsum("oi,bciw->bcow", bilinear_matrix(in_size, out_size, align_corners), x)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-14)


def _paddle_vs_torch_interpolate(in_size: int, out_size: int, align_corners: bool, align_mode: int = 0) -> float:
    import paddle
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).standard_normal((1, 2, in_size, 3))
    expected = F.interpolate(torch.tensor(x), (out_size, 3), mode="bilinear", align_corners=align_corners).numpy()
    got = paddle.nn.functional.interpolate(paddle.to_tensor(x), [out_size, 3], mode="bilinear",
                                           align_corners=align_corners, align_mode=align_mode).numpy()
    return float(np.abs(got - expected).max())


def test_paddle_half_pixel_rule_is_align_mode_0():
    """With align_corners=False, paddle's align_mode=0 is torch's (i + 0.5) * in / out - 0.5 rule;
    align_mode=1 is the asymmetric i * in / out rule."""
    assert _paddle_vs_torch_interpolate(5, 8, False, align_mode=0) < 1e-5
    assert _paddle_vs_torch_interpolate(5, 8, False, align_mode=1) > 1e-2


@pytest.mark.parametrize("in_size,out_size,align_corners", [(7, 11, False), (12, 9, False), (5, 8, True),
                                                             (20, 7, True)])
def test_paddle_interpolate_is_float32_precise_only(in_size, out_size, align_corners):
    """Paddle computes source coordinates and weights in float32 even on float64 tensors; the
    twins resize with `bilinear_matrix` instead. If this fails, paddle changed its kernel."""
    assert 1e-9 < _paddle_vs_torch_interpolate(in_size, out_size, align_corners) < 1e-5


def test_paddle_interpolate_to_one_row_takes_the_first_row():
    """Torch (align_corners=False) samples the centre of the input for an output size of 1,
    paddle the first row. If this fails, paddle changed its kernel."""
    import paddle
    import torch
    import torch.nn.functional as F

    x = np.arange(6.0).reshape(1, 1, 6, 1)
    torch_out = F.interpolate(torch.tensor(x), (1, 1), mode="bilinear", align_corners=False).numpy().ravel()
    paddle_out = paddle.nn.functional.interpolate(paddle.to_tensor(x), [1, 1], mode="bilinear",
                                                  align_corners=False, align_mode=0).numpy().ravel()
    assert torch_out.tolist() == [2.5] and paddle_out.tolist() == [0.0]
    assert (bilinear_matrix(6, 1, False) @ x.ravel()).tolist() == [2.5]


def _grad_of_pool(framework: str, pool, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if framework == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        out = pool(xt)
        (out * torch.tensor(cotangent)).sum().backward()
        return out.detach().numpy(), xt.grad.numpy()
    import paddle

    xp = paddle.to_tensor(x, stop_gradient=False)
    out = pool(xp)
    (out * paddle.to_tensor(cotangent)).sum().backward()
    return out.numpy(), xp.grad.numpy()


def _pool_reference(x: np.ndarray, cotangent: np.ndarray, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = adaptive_pool_matrix(x.shape[2], out_size), adaptive_pool_matrix(x.shape[3], out_size)
    return rows @ x @ cols.T, rows.T @ cotangent @ cols


@pytest.mark.parametrize("in_size,out_size", POOLS)
def test_adaptive_bins_agree_between_frameworks(in_size, out_size):
    """Both frameworks average floor(i*n/m) .. ceil((i+1)*n/m), also when m does not divide n."""
    import paddle
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, in_size, in_size - 1))
    cotangent = rng.standard_normal((1, 2, out_size, out_size))
    expected, _ = _pool_reference(x, cotangent, out_size)
    for framework, pool in [("torch", lambda t: torch.nn.functional.adaptive_avg_pool2d(t, out_size)),
                            ("paddle", lambda t: paddle.nn.functional.adaptive_avg_pool2d(t, out_size))]:
        out, _ = _grad_of_pool(framework, pool, x, cotangent)
        np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-14, err_msg=framework)
    assert [adaptive_bin(i, 9, 4) for i in range(4)] == [(0, 3), (2, 5), (4, 7), (6, 9)]


@pytest.mark.parametrize("in_size,out_size", POOLS)
def test_torch_adaptive_pool_gradient_is_the_matrix(in_size, out_size):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, in_size, in_size - 1))
    cotangent = rng.standard_normal((1, 2, out_size, out_size))
    _, grad = _grad_of_pool("torch", lambda t: torch.nn.functional.adaptive_avg_pool2d(t, out_size), x, cotangent)
    np.testing.assert_allclose(grad, _pool_reference(x, cotangent, out_size)[1], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("in_size,out_size", [(9, 4), (7, 3), (7, 5)])
def test_paddle_adaptive_pool_gradient_is_float32_precise_only(in_size, out_size):
    """Paddle scales the pooled gradient by a float32 1/bin_size (the forward is exact); the twins
    pool with `adaptive_pool_matrix` instead. If this fails, paddle changed its kernel."""
    import paddle

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, in_size, in_size - 1))
    cotangent = rng.standard_normal((1, 2, out_size, out_size))
    _, grad = _grad_of_pool("paddle", lambda t: paddle.nn.functional.adaptive_avg_pool2d(t, out_size), x, cotangent)
    assert 1e-12 < np.abs(grad - _pool_reference(x, cotangent, out_size)[1]).max() < 1e-6


@pytest.mark.parametrize("name,native", [("bilinear_resize", "interpolate"), ("adaptive_avg_pool_2d", "pool")])
def test_check_fails_when_the_paddle_twin_uses_paddles_own_operator(monkeypatch, name, native):
    """The float32 offsets are small but real: the train-mode check sees them (through the BNs)."""
    import paddle

    if native == "interpolate":
        def replacement(x, height, width, align_corners):
            return paddle.nn.functional.interpolate(x, [height, width], mode="bilinear",
                                                    align_corners=align_corners, align_mode=0)
    else:
        def replacement(x, size):
            return paddle.nn.functional.adaptive_avg_pool2d(x, size)
    monkeypatch.setattr(f"paddle_impl.blocks.strip_pooling.{name}", replacement)
    spec = Spec("mixed_pooling", MixedPoolingOptions(in_channels=8, pool_sizes=(4, 3)), name="native",
                input_shape=(2, 8, 9, 7))
    cases = check_spec(spec, directions=("torch->paddle",), modes=("train",))
    assert not cases[0].passed


# --- options and specs ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls,options,key", [
    (GlobalContextOptions, {"in_channels": 0}, "in_channels"),
    (GlobalContextOptions, {"in_channels": 12, "reduction": 8}, "reduction"),
    (GlobalContextOptions, {"in_channels": 16, "pooling": "max"}, "pooling"),
    (GlobalContextOptions, {"in_channels": 16, "fusions": []}, "fusions"),
    (GlobalContextOptions, {"in_channels": 16, "fusions": ["add", "add"]}, "fusions"),
    (GlobalContextOptions, {"in_channels": 16, "fusions": ["add", "concat"]}, "fusions[1]"),
    (GlobalContextOptions, {"in_channels": 16, "fusions": "add"}, "fusions"),
    (GlobalContextOptions, {"in_channels": 16, "zero_init_last": 1}, "zero_init_last"),
    (StripPoolingOptions, {"in_channels": 8, "mid_channels": 0}, "mid_channels"),
    (StripPoolingOptions, {"in_channels": 8, "output_bn": "yes"}, "output_bn"),
    (MixedPoolingOptions, {"in_channels": 8, "reduction": 3}, "reduction"),
    (MixedPoolingOptions, {"in_channels": 8, "pool_sizes": []}, "pool_sizes"),
    (MixedPoolingOptions, {"in_channels": 8, "pool_sizes": [20, 0]}, "pool_sizes[1]"),
    (MixedPoolingOptions, {"in_channels": 8, "pool_sizes": [2.5]}, "pool_sizes[0]"),
    (MixedPoolingOptions, {"in_channels": 8, "align_corners": "false"}, "align_corners"),
])
def test_bad_options_name_the_key(cls, options, key):
    with pytest.raises(OptionError) as err:
        cls(**options)
    assert err.value.key == key


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_twin_constructors_validate_like_specs(framework):
    from crossattn.registry import twin_class

    with pytest.raises(OptionError, match="reduction"):
        twin_class("global_context", framework)(in_channels=12, reduction=8)
    with pytest.raises(OptionError, match="pool_sizes"):
        twin_class("mixed_pooling", framework)(in_channels=8, pool_sizes=())


@pytest.mark.parametrize("options,shape", [
    (GlobalContextOptions(in_channels=8, reduction=2), (2, 8, 4)),
    (GlobalContextOptions(in_channels=8, reduction=2), (2, 4, 4, 4)),
    (StripPoolingOptions(in_channels=8), (2, 8, 4, 4, 4)),
    (MixedPoolingOptions(in_channels=8), (2, 6, 4, 4)),
])
def test_unfeedable_input_shapes_are_rejected(options, shape):
    with pytest.raises(OptionError) as err:
        options.check_input_shape(shape)
    assert err.value.key == "input_shape"


def test_spec_file_errors_name_key_and_line(tmp_path):
    path = tmp_path / "gc.yaml"
    path.write_text("type: global_context\ninput_shape: [2, 8, 4, 4]\noptions:\n  in_channels: 8\n"
                    "  reduction: 2\n  fusions: [add, concat]\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.key == "options.fusions[1]" and err.value.line == 6
    path.write_text("type: mixed_pooling\ninput_shape: [2, 8, 9, 9]\noptions:\n  in_channels: 8\n  ratio: 4\n")
    with pytest.raises(SpecError, match="known options: in_channels, pool_sizes") as err:
        load_spec(path)
    assert err.value.key == "options.ratio" and err.value.line == 5
    path.write_text("type: strip_pooling\ninput_shape: [2, 4, 9, 9]\noptions:\n  in_channels: 8\n")
    with pytest.raises(SpecError, match="does not match in_channels") as err:
        load_spec(path)
    assert err.value.key == "input_shape" and err.value.line == 2
