"""Deformable conv and Res2Net twins: against paddle's own kernel, against plain convs, and each other."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.blocks.deform_conv import DeformConvOptions
from crossattn.blocks.res2net import Res2NetOptions
from crossattn.resample import avg_pool_geometry
from crossattn.check import check_spec
from crossattn.errors import OptionError, SpecError
from crossattn.spec import SPECS_DIR, Spec, load_spec
from paddle_impl.blocks import deform_conv as paddle_deform
from paddle_impl.blocks import res2net as paddle_res2net
from tests.helpers import assert_twins_equivalent
from torch_impl.blocks import deform_conv as torch_deform
from torch_impl.blocks import res2net as torch_res2net

SHIPPED = sorted(p.stem for p in SPECS_DIR.glob("blocks/*.yaml")
                 if p.stem.startswith(("deform_conv_", "res2net_")))


def _pd(array: np.ndarray, grad: bool = False) -> paddle.Tensor:
    return paddle.to_tensor(array, stop_gradient=not grad)


def _th(array: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.from_numpy(array).requires_grad_(grad)


# --- deformable convolution: paddle twin against paddle.vision.ops.deform_conv2d ---------------------

GEOMETRIES = {
    "strided-dilated-grouped": dict(stride=2, dilation=2, groups=2, deformable_groups=2),
    "plain": dict(stride=1, dilation=1, groups=1, deformable_groups=1),
    "kernel2-4-groups": dict(kernel_size=2, padding=0, groups=4, deformable_groups=4),
}


def _paddle_layer_and_reference(geometry: dict, modulated: bool, offsets: np.ndarray | None = None):
    """Our layer's and paddle's kernel's output and gradients for the same (float64) tensors."""
    rng = np.random.default_rng(7)
    layer = paddle_deform.DeformConv2d(4, 4, **geometry)
    layer.to(dtype="float64")
    opts = layer.options
    out_h, out_w = opts.output_size(7, 7)
    x = rng.standard_normal((2, 4, 7, 7))
    # offsets of a few pixels: many sampling points land outside the 7x7 map
    offset = offsets if offsets is not None else 2.5 * rng.standard_normal((2, opts.offset_channels, out_h, out_w))
    mask = rng.uniform(0, 1, (2, opts.deformable_groups * opts.kernel_points, out_h, out_w)) if modulated else None
    weight, bias = rng.standard_normal(opts.weight_shape), rng.standard_normal(4)
    cotangent = _pd(rng.standard_normal((2, 4, out_h, out_w)))
    layer.weight.set_value(weight)
    layer.bias.set_value(bias)

    def run(function, params):
        inputs = [_pd(x, True), _pd(offset, True)] + ([_pd(mask, True)] if modulated else [None])
        out = function(*inputs)
        (out * cotangent).sum().backward()
        grads = [t.grad.numpy() for t in inputs if t is not None] + [p.grad.numpy() for p in params]
        return out.numpy(), grads

    ours = run(lambda a, o, m: layer(a, o, m), [layer.weight, layer.bias])
    w, b = _pd(weight, True), _pd(bias, True)
    reference = run(lambda a, o, m: paddle.vision.ops.deform_conv2d(
        a, o, w, b, stride=opts.stride, padding=opts.pad, dilation=opts.dilation,
        deformable_groups=opts.deformable_groups, groups=opts.groups, mask=m), [w, b])
    return ours, reference


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_sampling_matches_paddle_deform_conv2d_forward_and_backward(geometry, modulated):
    (out, grads), (ref_out, ref_grads) = _paddle_layer_and_reference(GEOMETRIES[geometry], modulated)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    names = ["input", "offset"] + (["mask"] if modulated else []) + ["weight", "bias"]
    for name, got, want in zip(names, grads, ref_grads):
        assert np.abs(want).max() > 1e-3, f"{name} gradient is trivially zero"
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{name} gradient")


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_integer_positions_follow_paddles_floor_and_border_rules(modulated):
    """At integer positions bilinear sampling has a kink: the gradient is the one-sided difference
    towards +1 (corners floor(p), floor(p) + 1), and a point at exactly -1 or H gives no gradient.
    Integer offsets from -6 to 6 on a 7x7 map hit both cases many times."""
    rng = np.random.default_rng(3)
    offsets = rng.integers(-6, 7, (2, 36, 7, 7)).astype(np.float64)
    geometry = dict(stride=1, dilation=1, groups=1, deformable_groups=2)
    (out, grads), (ref_out, ref_grads) = _paddle_layer_and_reference(geometry, modulated, offsets)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_offset_channels_are_dy_then_dx_per_kernel_point():
    """Channel 2k moves kernel point k down, channel 2k + 1 moves it right (paddle's layout)."""
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float64).reshape(2, 1, 5, 5)
    layer = torch_deform.DeformConv2d(1, 1, kernel_size=1, bias=False).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    down = np.zeros((2, 2, 5, 5))
    down[:, 0] = 1.0
    expected_down = np.concatenate([x[:, :, 1:], np.zeros((2, 1, 1, 5))], axis=2)  # row 4 reads row 5: zero
    np.testing.assert_array_equal(layer(_th(x), _th(down)).detach().numpy(), expected_down)
    right = np.zeros((2, 2, 5, 5))
    right[:, 1] = -0.5
    expected_right = np.concatenate([0.5 * x[:, :, :, :1], 0.5 * (x[:, :, :, 1:] + x[:, :, :, :-1])], axis=3)
    np.testing.assert_allclose(layer(_th(x), _th(right)).detach().numpy(), expected_right, atol=1e-13)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_zero_offsets_and_unit_mask_equal_a_regular_conv(framework, modulated):
    rng = np.random.default_rng(1)
    geometry = dict(kernel_size=3, stride=2, padding=1, dilation=2, groups=2, deformable_groups=2)
    opts = DeformConvOptions(in_channels=4, out_channels=6, **geometry)
    out_h, out_w = opts.output_size(7, 7)
    x, weight, bias = rng.standard_normal((2, 4, 7, 7)), rng.standard_normal(opts.weight_shape), rng.standard_normal(6)
    offset = np.zeros((2, opts.offset_channels, out_h, out_w))
    mask = np.ones((2, 2 * opts.kernel_points, out_h, out_w)) if modulated else None
    conv_args = dict(stride=2, padding=1, dilation=2, groups=2)
    if framework == "torch":
        layer = torch_deform.DeformConv2d(4, 6, **geometry).double()
        layer.load_state_dict({"weight": _th(weight), "bias": _th(bias)})
        got = layer(_th(x), _th(offset), None if mask is None else _th(mask)).detach().numpy()
        want = torch.nn.functional.conv2d(_th(x), _th(weight), _th(bias), **conv_args).numpy()
    else:
        layer = paddle_deform.DeformConv2d(4, 6, **geometry)
        layer.to(dtype="float64")
        layer.set_state_dict({"weight": weight, "bias": bias})
        got = layer(_pd(x), _pd(offset), None if mask is None else _pd(mask)).numpy()
        want = paddle.nn.functional.conv2d(_pd(x), _pd(weight), _pd(bias), **conv_args).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2"])
def test_block_starts_as_a_plain_conv(modulated):
    """The offset predictor is zero-initialised: offsets 0, mask sigmoid(0) = 1/2 (as in the v2 paper)."""
    block = torch_deform.DeformConvBlock(4, 4, modulated=modulated).double()
    x = _th(np.random.default_rng(2).standard_normal((2, 4, 7, 7)))
    conv = block.conv
    plain = torch.nn.functional.conv2d(x, conv.weight, None, padding=1)
    scale = 0.5 if modulated else 1.0
    expected = scale * plain + conv.bias.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(block(x).detach().numpy(), expected.detach().numpy(), rtol=0, atol=1e-12)
    assert not block.offset_conv.weight.detach().any()


# --- twins equivalence: shipped specs and a few more geometries -----------------------------------------

def test_every_deform_and_res2net_spec_is_shipped():
    assert {"deform_conv_v1", "deform_conv_v2", "deform_conv_v2_strided_grouped",
            "res2net_normal", "res2net_stage_stride2"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_twins_are_equivalent(name):
    cases = assert_twins_equivalent(load_spec(SPECS_DIR / "blocks" / f"{name}.yaml"))
    assert len(cases) == 5  # 2 directions x 2 modes + the large input probe


@pytest.mark.parametrize("spec", [
    Spec("deform_conv", DeformConvOptions(in_channels=4, out_channels=2, kernel_size=2, padding=0,
                                          deformable_groups=4), name="deform-k2", input_shape=(2, 4, 6, 5)),
    Spec("res2net", Res2NetOptions(inplanes=12, planes=4, scale=3, base_width=48, stype="stage",
                                   downsample="avg_conv"), name="res2net-s3", input_shape=(2, 12, 5, 5)),
    Spec("res2net", Res2NetOptions(inplanes=16, planes=4, scale=1, base_width=64),
         name="res2net-s1", input_shape=(2, 16, 5, 5)),
], ids=lambda s: s.name)
def test_more_geometries_are_equivalent(spec):
    assert_twins_equivalent(spec)


def test_a_perturbed_offset_predictor_fails_the_check():
    spec = load_spec(SPECS_DIR / "blocks" / "deform_conv_v2.yaml")

    def perturb(state):
        state["offset_conv.weight"] = state["offset_conv.weight"] + 1e-5

    cases = check_spec(spec, directions=("torch->paddle",), modes=("eval",), after_transfer=perturb)
    assert not cases[0].passed
    assert "output" in {c.tensor for c in cases[0].failures}


# --- Res2Net structure ----------------------------------------------------------------------------------

def test_width_follows_the_paper():
    opts = Res2NetOptions(inplanes=64, planes=64)  # Res2Net-50 26w x 4s, first stage
    assert (opts.width, opts.split_channels, opts.out_channels, opts.shortcut) == (26, 104, 256, "conv")
    assert Res2NetOptions(inplanes=512, planes=128).width == 52
    assert Res2NetOptions(inplanes=256, planes=64).shortcut == "none"


@pytest.mark.parametrize("stype,stride", [("normal", 1), ("stage", 2)])
def test_splits_are_hierarchical_and_the_last_one_skips_the_convs(stype, stride):
    block = torch_res2net.Res2NetBottleneck(16, 8, stride=stride, stype=stype).double().eval()
    width = block.options.width
    seen = {}
    block.convs[1].register_forward_pre_hook(lambda m, args: seen.__setitem__("branch2_in", args[0]))
    block.bns[0].register_forward_hook(lambda m, args, out: seen.__setitem__("y1_bn", out))
    block.conv3.register_forward_pre_hook(lambda m, args: seen.__setitem__("concat", args[0]))
    x = _th(np.random.default_rng(4).standard_normal((2, 16, 8, 8)))
    with torch.no_grad():
        block(x)
        split_out = torch.relu(block.bn1(block.conv1(x)))
    x2, last = split_out[:, width: 2 * width], split_out[:, -width:]
    y1 = torch.relu(seen["y1_bn"])
    if stype == "normal":
        torch.testing.assert_close(seen["branch2_in"], y1 + x2, rtol=0, atol=1e-13)
        torch.testing.assert_close(seen["concat"][:, -width:], last, rtol=0, atol=0)
    else:
        torch.testing.assert_close(seen["branch2_in"], x2, rtol=0, atol=0)
        pooled = torch.nn.AvgPool2d(3, stride, padding=1, count_include_pad=True)(last)
        torch.testing.assert_close(seen["concat"][:, -width:], pooled, rtol=0, atol=1e-13)


# --- the average-pool primitive -------------------------------------------------------------------------

POOLS = [dict(kernel=3, stride=1, padding=1, count_padding=True), dict(kernel=3, stride=2, padding=1, count_padding=True),
         dict(kernel=3, stride=2, padding=1, count_padding=False),
         dict(kernel=2, stride=2, padding=0, count_padding=False, ceil_mode=True)]


def _exact_avg_pool_grad(shape, cotangent, kernel, stride, padding=0, count_padding=True, ceil_mode=False):
    geometry = avg_pool_geometry(shape[2], shape[3], kernel, stride, padding, count_padding, ceil_mode)
    grad = np.zeros(shape)
    for i in range(geometry.out_size[0]):
        for j in range(geometry.out_size[1]):
            top, left = i * stride - padding, j * stride - padding
            rows = slice(max(top, 0), min(top + kernel, shape[2]))
            cols = slice(max(left, 0), min(left + kernel, shape[3]))
            grad[:, :, rows, cols] += cotangent[:, :, i:i + 1, j:j + 1] / geometry.divisor[i, j]
    return grad


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_avg_pool_twins_equal_torch_forward_and_the_exact_gradient(pool, size):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, size, size))
    reference = torch.nn.AvgPool2d(pool["kernel"], pool["stride"], pool["padding"], ceil_mode=pool.get("ceil_mode", False),
                                   count_include_pad=pool["count_padding"])(_th(x)).numpy()
    cotangent = rng.standard_normal(reference.shape)
    exact = _exact_avg_pool_grad(x.shape, cotangent, **pool)
    tx, px = _th(x, True), _pd(x, True)
    t_out, p_out = torch_res2net.AvgPool(**pool)(tx), paddle_res2net.AvgPool(**pool)(px)
    (t_out * _th(cotangent)).sum().backward()
    (p_out * _pd(cotangent)).sum().backward()
    for out, grad in ((t_out.detach().numpy(), tx.grad.numpy()), (p_out.numpy(), px.grad.numpy())):
        np.testing.assert_allclose(out, reference, rtol=0, atol=1e-14)
        np.testing.assert_allclose(grad, exact, rtol=0, atol=1e-14)


def test_pinned_avg_pool_differences_between_the_frameworks():
    """Why the twins compute average pooling themselves.

    1. Defaults differ: torch's AvgPool2d counts padded cells in the divisor (count_include_pad=True),
       paddle's AvgPool2D excludes them (exclusive=True).
    2. paddle's AvgPool2D gradient is not exact in float64 (errors ~1e-8, beyond the 1e-9 check
       tolerance). If this assertion starts failing, paddle has fixed it.
    """
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 8, 8))
    torch_default = torch.nn.AvgPool2d(3, 1, padding=1)(_th(x)).numpy()
    paddle_default = paddle.nn.AvgPool2D(3, 1, padding=1)(_pd(x)).numpy()
    assert np.abs(torch_default - paddle_default).max() > 0.1
    px = _pd(x, True)
    out = paddle.nn.AvgPool2D(3, 1, padding=1, exclusive=False)(px)
    np.testing.assert_allclose(out.numpy(), torch_default, rtol=0, atol=1e-14)
    cotangent = rng.standard_normal(tuple(out.shape))
    (out * _pd(cotangent)).sum().backward()
    exact = _exact_avg_pool_grad(x.shape, cotangent, 3, 1, 1, count_padding=True)
    assert np.abs(px.grad.numpy() - exact).max() > 1e-10


# --- options and spec errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("options,key", [
    (dict(in_channels=4, out_channels=6, groups=4), "groups"),
    (dict(in_channels=6, out_channels=4, groups=4), "groups"),
    (dict(in_channels=4, out_channels=4, deformable_groups=3), "deformable_groups"),
    (dict(in_channels=4, out_channels=4, padding=-1), "padding"),
    (dict(in_channels=4, out_channels=4, kernel_size=0), "kernel_size"),
    (dict(in_channels=4, out_channels=4, modulated="yes"), "modulated"),
])
def test_deform_conv_option_errors_name_the_key(options, key):
    with pytest.raises(OptionError) as info:
        DeformConvOptions(**options)
    assert info.value.key == key
    with pytest.raises(OptionError):  # the twins validate the same way
        paddle_deform.DeformConvBlock(**options)


@pytest.mark.parametrize("options,key", [
    (dict(inplanes=16, planes=2), "base_width"),
    (dict(inplanes=16, planes=8, stride=2), "stride"),
    (dict(inplanes=16, planes=8, downsample="none"), "downsample"),
    (dict(inplanes=16, planes=8, stype="first"), "stype"),
    (dict(inplanes=16, planes=8, scale=0), "scale"),
])
def test_res2net_option_errors_name_the_key(options, key):
    with pytest.raises(OptionError) as info:
        Res2NetOptions(**options)
    assert info.value.key == key
    with pytest.raises(OptionError):
        torch_res2net.Res2NetBottleneck(**options)


@pytest.mark.parametrize("options,shape", [
    (DeformConvOptions(in_channels=4, out_channels=4, padding=0, dilation=3), (2, 4, 6, 6)),
    (DeformConvOptions(in_channels=4, out_channels=4), (2, 3, 7, 7)),
    (Res2NetOptions(inplanes=32, planes=8), (2, 32, 8)),
])
def test_unfeedable_input_shapes_are_rejected(options, shape):
    with pytest.raises(OptionError) as info:
        options.check_input_shape(shape)
    assert info.value.key == "input_shape"


def test_spec_file_errors_name_the_key_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("type: deform_conv\ninput_shape: [2, 4, 7, 7]\noptions:\n  in_channels: 4\n"
                    "  out_channels: 4\n  deformable_groups: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "options.deformable_groups" and info.value.line == 6
    path.write_text("type: res2net\ninput_shape: [2, 16, 8, 8]\noptions:\n  inplanes: 32\n  planes: 8\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "input_shape" and info.value.line == 2


def test_block_option_modules_do_not_import_numpy():
    """Listing specs imports every option module; numpy waits until shapes are computed."""
    import subprocess
    import sys

    code = ("import sys, crossattn.registry as r; r.entries(); "
            "import crossattn.blocks.deform_conv as d; assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
