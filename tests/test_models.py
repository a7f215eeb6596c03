"""Model twins: equivalent on small variants, options validated, derived sizes and primitives pinned.

Small variants (narrow widths, 32-pixel inputs) keep the file fast; the shipped
full-size specs are checked under the `slow` marker.
"""

from __future__ import annotations

import numpy as np
import pytest

from crossattn import registry
from crossattn.check import check_spec
from crossattn.errors import OptionError, SpecError
from crossattn.models.gcnet_seg import GCNetSegOptions
from crossattn.resample import bilinear_matrix
from crossattn.models.hybrid_sn import HybridSNOptions
from crossattn.models.mnist_non_local import MnistNonLocalOptions
from crossattn.models.nested import require_single_input
from crossattn.models.resnet_ablation import ResNetAblationOptions
from crossattn.models.resnet_parts import plan_stages
from crossattn.models.se_resnet import SEResNetOptions
from crossattn.spec import Spec, load_spec, shipped_spec_paths
from tests.helpers import assert_twins_equivalent

SMALL_WIDTHS = (4, 8, 16, 32)
#: batch 4: the last stage of a 32-pixel ResNet is 1x1, and train-mode BatchNorm over only
#: 2 values per channel amplifies float64 rounding past the check's 1e-9 (conditioning, not divergence)
RESNET_INPUT = (4, 3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """With paddle loaded, torch's multi-threaded CPU kernels contend with paddle's OpenMP threads
    and small ops run ~10x slower; one torch thread keeps this file fast."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _resnet(name: str, **options) -> Spec:
    options.setdefault("widths", SMALL_WIDTHS)
    return Spec("resnet_ablation", ResNetAblationOptions(**options), name=name, input_shape=RESNET_INPUT)


def _non_local(mode: str, **options) -> dict:
    return {"type": "non_local", "options": {"mode": mode, "sub_sample": False, **options}}


# --- equivalence on small variants ----------------------------------------------------------------

RESNET_VARIANTS = {
    "baseline": {"extra_block_stage": 3},
    "nl_gaussian": {"attention": _non_local("gaussian", reduction=1)},
    "nl_embedded_gaussian": {"attention": _non_local("embedded_gaussian")},
    "nl_dot_product": {"attention": _non_local("dot_product")},
    "nl_concatenation": {"attention": _non_local("concatenation")},
    "nl_embedded_gaussian_no_bottleneck": {"attention": _non_local("embedded_gaussian", reduction=1)},
    "se_after_stage_3": {"attention": {"type": "se", "options": {"reduction": 4}}},
    "gc_after_stage_2": {"attention": {"type": "global_context", "options": {"reduction": 4}}, "attention_stage": 2},
    "cifar_stem_conv_bn_no_bias": {"stem": "cifar", "projection": "conv_bn", "conv_bias": False,
                                   "extra_block_stage": 1},
}


@pytest.mark.parametrize("variant", list(RESNET_VARIANTS))
def test_resnet_ablation_twins_are_equivalent(variant):
    assert_twins_equivalent(_resnet(f"resnet18_{variant}", **RESNET_VARIANTS[variant]))


@pytest.mark.parametrize("options", [
    {"mode": "embedded_gaussian"},
    {"mode": "dot_product", "sub_sample": False, "bn_layer": False},
])
def test_mnist_non_local_twins_are_equivalent(options):
    opts = MnistNonLocalOptions(image_size=(16, 16), widths=(4, 8, 8), hidden=16, dropout=0.0, **options)
    assert_twins_equivalent(Spec("mnist_non_local", opts, name="mnist_small", input_shape=(2, 1, 16, 16)))


@pytest.mark.parametrize("depth,width", [(18, 8), (50, 4)])
def test_se_resnet_twins_are_equivalent(depth, width):
    opts = SEResNetOptions(depth=depth, width=width, se_reduction=4, num_classes=5)
    assert_twins_equivalent(Spec("se_resnet", opts, name=f"se_resnet{depth}_small", input_shape=RESNET_INPUT))


HYBRID_SMALL = dict(bands=16, patch_size=11, conv3d_channels=(2, 4, 4), hidden=(16, 8), num_classes=5, dropout=0.0)


@pytest.mark.parametrize("options", [
    {"variant": "3d_first", "conv2d_channels": 8},
    {"variant": "3d_first", "conv2d_channels": 8, "attention": True, "attention_reduction": 4},
    {"variant": "2d_first", "conv2d_channels": 16, "fc_relu": False},
    {"variant": "3d_first", "conv2d_channels": 8, "batch_norm": False},
])
def test_hybrid_sn_twins_are_equivalent(options):
    opts = HybridSNOptions(**HYBRID_SMALL, **options)
    assert_twins_equivalent(Spec("hybrid_sn", opts, name="hybrid_sn_small", input_shape=(2, 1, 16, 11, 11)))


@pytest.mark.parametrize("align_corners", [True, False])
def test_gcnet_seg_twins_are_equivalent(align_corners):
    # two units in stages 3 and 4 so that dilations 2 and 4 are both exercised
    opts = GCNetSegOptions(width=4, stage_blocks=(1, 1, 2, 2), head_channels=8, gc_reduction=4, num_classes=3,
                           align_corners=align_corners)
    assert_twins_equivalent(Spec("gcnet_seg", opts, name="gcnet_seg_small", input_shape=(2, 3, 32, 32)))


# --- structure and derived sizes ------------------------------------------------------------------

def test_hybrid_sn_linear_sizes_are_derived_from_the_input():
    assert HybridSNOptions().fc_in == 64 * 17 * 17 == 18496  # the paper's 25x25x30 patch
    assert HybridSNOptions().conv2d_in == 32 * 18 == 576
    assert HybridSNOptions(variant="2d_first").fc_in == 32 * 52 * 17 * 17 == 480896  # seed 002's Linear
    assert HybridSNOptions(bands=20, patch_size=11).fc_in == 64 * 3 * 3


def test_mnist_linear_size_is_derived_from_the_image_size():
    assert MnistNonLocalOptions().fc_in == 128 * 3 * 3
    assert MnistNonLocalOptions(image_size=(32, 40)).fc_in == 128 * 4 * 5


def test_resnet_plans_follow_torchvision():
    basic = plan_stages(64, (64, 128, 256, 512), (2, 2, 3, 2))
    assert [len(s) for s in basic] == [2, 2, 3, 2]
    assert [u.projects for u in basic[0]] == [False, False]
    assert (basic[1][0].stride, basic[1][0].projects) == (2, True)
    dilated = GCNetSegOptions().stages
    assert [(u.stride, u.dilation) for u in dilated[2][:2]] == [(1, 1), (1, 2)]
    assert [(u.stride, u.dilation) for u in dilated[3][:2]] == [(1, 2), (1, 4)]
    assert dilated[3][-1].out_channels == 2048 and GCNetSegOptions().output_stride == 8


@pytest.mark.parametrize("depth,units", [(18, 8), (34, 16), (50, 16), (101, 33), (152, 50)])
def test_se_resnet_depths(depth, units):
    opts = SEResNetOptions(depth=depth)
    assert sum(len(s) for s in opts.stages) == units
    assert opts.out_channels == (512 if depth < 50 else 2048)


def test_baseline_has_one_extra_unit_in_stage_3_and_variants_insert_after_stage_3():
    from torch_impl.models.resnet_ablation import ResNetAblation

    baseline = ResNetAblation(widths=SMALL_WIDTHS, extra_block_stage=3)
    assert [len(stage) for stage in baseline.stages] == [2, 2, 3, 2]
    assert baseline.attention is None
    variant = ResNetAblation(widths=SMALL_WIDTHS, attention=_non_local("gaussian", reduction=1))
    assert [len(stage) for stage in variant.stages] == [2, 2, 2, 2]
    assert variant.attention.options.in_channels == SMALL_WIDTHS[2]


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_gcnet_seg_logits_have_the_input_size(framework):
    from crossattn.frameworks import adapter

    opts = GCNetSegOptions(width=4, stage_blocks=(1, 1, 1, 1), head_channels=8, gc_reduction=4, num_classes=3)
    spec = Spec("gcnet_seg", opts, name="gcnet_seg_small", input_shape=(1, 3, 40, 24))
    model = registry.build(spec, framework)
    x = np.zeros(spec.input_shape)
    step = adapter(framework).step(adapter(framework).to_dtype(model, "float64"), x, np.ones, train=False)
    assert step.output.shape == (1, 3, 40, 24)


# --- options and spec errors ----------------------------------------------------------------------

def test_attention_channels_are_filled_in_when_left_out():
    opts = ResNetAblationOptions(widths=SMALL_WIDTHS, attention={"type": "se", "options": {"reduction": 4}},
                                 attention_stage=2)
    assert opts.attention.options.channels == SMALL_WIDTHS[1]
    assert ResNetAblationOptions(widths=SMALL_WIDTHS, attention=_non_local("gaussian")).attention.options.in_channels \
        == SMALL_WIDTHS[2]


@pytest.mark.parametrize("options,key", [
    ({"attention": {"type": "non_local", "options": {"in_channels": 8}}}, "attention.options.in_channels"),
    ({"attention": {"type": "se", "options": {"channels": 8}}}, "attention.options.channels"),
    ({"attention": {"type": "non_local", "options": {"mode": "cosine"}}}, "attention.options.mode"),
    ({"attention": {"type": "non_local", "options": {"in_channels": 16, "reduction": 3}}},
     "attention.options.reduction"),
    ({"attention": {"type": "no_such_block"}}, "attention.type"),
    ({"attention": {"type": "se_resnet"}}, "attention.type"),
    ({"attention": {"type": "se", "option": {}}}, "attention.option"),
    ({"attention": "non_local"}, "attention"),
    ({"attention_stage": 5}, "attention_stage"),
    ({"extra_block_stage": 0}, "extra_block_stage"),
    ({"stage_blocks": (2, 2, 2)}, "stage_blocks"),
    ({"widths": (4, 0, 16, 32)}, "widths[1]"),
    ({"stem": "tiny"}, "stem"),
    ({"projection": "identity"}, "projection"),
])
def test_resnet_ablation_options_are_validated(options, key):
    options.setdefault("widths", SMALL_WIDTHS)
    with pytest.raises(OptionError) as info:
        ResNetAblationOptions(**options)
    assert info.value.key == key, info.value


@pytest.mark.parametrize("cls,options,key", [
    (MnistNonLocalOptions, {"image_size": (4, 4)}, "image_size"),
    (MnistNonLocalOptions, {"widths": (5, 64, 128)}, "widths[0]"),
    (MnistNonLocalOptions, {"dropout": 1.0}, "dropout"),
    (MnistNonLocalOptions, {"mode": "cosine"}, "mode"),
    (SEResNetOptions, {"depth": 20}, "depth"),
    (SEResNetOptions, {"width": 0}, "width"),
    (HybridSNOptions, {"bands": 12}, "bands"),
    (HybridSNOptions, {"variant": "2d_first", "conv2d_channels": 12}, "conv2d_channels"),
    (HybridSNOptions, {"patch_size": 8}, "patch_size"),
    (HybridSNOptions, {"variant": "2d_first", "attention": True}, "attention"),
    (HybridSNOptions, {"dropout": -0.1}, "dropout"),
    (HybridSNOptions, {"hidden": (256,)}, "hidden"),
    (GCNetSegOptions, {"gc_reduction": 3}, "gc_reduction"),
    (GCNetSegOptions, {"dilate": (True, True)}, "dilate"),
])
def test_model_options_are_validated(cls, options, key):
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert info.value.key == key, info.value


def test_twin_constructors_validate_like_specs():
    from paddle_impl.models.hybrid_sn import HybridSN

    with pytest.raises(OptionError) as info:
        HybridSN(bands=10)
    assert info.value.key == "bands"


def test_a_block_needing_two_inputs_is_refused():
    spec = Spec.coerce_option("attention", {"type": "se", "options": {"channels": 8}})

    def fuse(x, residual):
        return x + residual

    with pytest.raises(OptionError) as info:
        require_single_input("attention", spec, fuse)
    assert info.value.key == "attention.type"
    require_single_input("attention", spec, lambda x, residual=None: x)


def test_nested_spec_error_in_a_file_names_the_key_path_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("type: resnet_ablation\n"
                    "input_shape: [2, 3, 96, 96]\n"
                    "options:\n"
                    "  attention:\n"
                    "    type: non_local\n"
                    "    options:\n"
                    "      mode: cosine\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "options.attention.options.mode"
    assert info.value.line == 7


def test_spec_file_input_shape_is_checked_against_the_model(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("type: hybrid_sn\ninput_shape: [2, 1, 30, 13, 13]\noptions:\n  patch_size: 25\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "input_shape"
    assert "patch" in info.value.message


def test_inserted_block_input_is_checked_at_the_stage_size(tmp_path):
    path = tmp_path / "bad.yaml"
    # 16-pixel input: stage 3 is 1x1, too small for the non-local block's 2x2 sub-sampling
    path.write_text("type: resnet_ablation\ninput_shape: [2, 3, 16, 16]\noptions:\n"
                    "  attention: {type: non_local, options: {sub_sample: true}}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.key == "input_shape"
    assert "after stage 3" in info.value.message


def test_every_shipped_model_spec_loads():
    paths = shipped_spec_paths("model")
    assert len(paths) >= 17
    for path in paths:
        spec = load_spec(path)
        assert spec.kind == "model" and spec.input_shape is not None


# --- primitive differences the twins avoid ----------------------------------------------------------

def _interpolate_reference(x: np.ndarray, scale: int, align_corners: bool) -> np.ndarray:
    rows = bilinear_matrix(x.shape[2], x.shape[2] * scale, align_corners)
    cols = bilinear_matrix(x.shape[3], x.shape[3] * scale, align_corners)
    return np.einsum("oh,nchw,pw->ncop", rows, x, cols)


@pytest.mark.parametrize("align_corners", [True, False])
def test_bilinear_weights_match_torch_interpolate(align_corners):
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=8, mode="bilinear",
                                               align_corners=align_corners).numpy()
    assert np.abs(_interpolate_reference(x, 8, align_corners) - expected).max() < 1e-13


def test_paddle_interpolate_align_corners_is_single_precision_in_float64():
    """Why the twins upsample by matmul: paddle's bilinear interpolate with align_corners=True
    computes source coordinates in float32 (about 5e-7 off in float64); torch's is exact."""
    import paddle

    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    got = paddle.nn.functional.interpolate(paddle.to_tensor(x), scale_factor=8, mode="bilinear",
                                           align_corners=True).numpy()
    assert np.abs(got - _interpolate_reference(x, 8, True)).max() > 1e-8


def test_the_check_catches_paddle_interpolate_in_the_head(monkeypatch):
    import paddle

    from paddle_impl.models import gcnet_seg as paddle_gcnet

    def native_interpolate(self, x):
        return paddle.nn.functional.interpolate(x, scale_factor=self.scale_factor, mode="bilinear",
                                               align_corners=self.align_corners)

    monkeypatch.setattr(paddle_gcnet.BilinearUpsample, "forward", native_interpolate)
    opts = GCNetSegOptions(width=4, stage_blocks=(1, 1, 1, 1), head_channels=8, gc_reduction=4, num_classes=3)
    spec = Spec("gcnet_seg", opts, name="gcnet_seg_small", input_shape=(2, 3, 32, 32))
    cases = check_spec(spec, directions=("torch->paddle",), modes=("eval",))
    assert "output" in {c.tensor for c in cases[0].failures}


def test_paddle_adaptive_average_pool_gradient_is_single_precision():
    """Why the heads write the global mean out: paddle's adaptive pooling backward scales by 1/(H*W)
    in float32; a mean over the spatial axes is exact in both frameworks."""
    import paddle

    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((2, 3, 5, 7)), rng.standard_normal((2, 3, 1, 1))
    exact = np.broadcast_to(weight / 35.0, x.shape)
    pooled = paddle.to_tensor(x, stop_gradient=False)
    (paddle.nn.functional.adaptive_avg_pool2d(pooled, 1) * paddle.to_tensor(weight)).sum().backward()
    assert np.abs(pooled.grad.numpy() - exact).max() > 1e-12
    mean = paddle.to_tensor(x, stop_gradient=False)
    (mean.mean(axis=[2, 3], keepdim=True) * paddle.to_tensor(weight)).sum().backward()
    assert np.abs(mean.grad.numpy() - exact).max() < 1e-15


def test_dropout_scales_alike_and_is_excluded_from_checks():
    """paddle's Dropout default mode upscale_in_train scales kept values by 1/(1-p) as torch does;
    which values are dropped is random per framework, so checked specs use p = 0."""
    import paddle
    import torch

    ones = np.ones(4000)
    torch_drop, paddle_drop = torch.nn.Dropout(0.25), paddle.nn.Dropout(0.25)
    assert paddle_drop.mode == "upscale_in_train"
    torch_drop.train()
    paddle_drop.train()
    for out in (torch_drop(torch.from_numpy(ones)).numpy(), paddle_drop(paddle.to_tensor(ones)).numpy()):
        assert set(np.unique(out)) == {0.0, 1.0 / 0.75}
    torch_drop.eval()
    paddle_drop.eval()
    assert np.array_equal(paddle_drop(paddle.to_tensor(ones)).numpy(), ones)
    assert np.array_equal(torch_drop(torch.from_numpy(ones)).numpy(), ones)
    for path in shipped_spec_paths("model"):
        spec = load_spec(path)
        assert getattr(spec.options, "dropout", 0.0) == 0.0, path.name


# --- full size ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("path", shipped_spec_paths("model"), ids=lambda p: p.stem)
def test_shipped_model_spec_is_equivalent_at_full_size(path):
    assert_twins_equivalent(load_spec(path))


def test_a_two_input_fusion_block_cannot_be_inserted():
    from crossattn.errors import OptionError
    from crossattn.models.resnet_ablation import ResNetAblationOptions

    with pytest.raises(OptionError, match="fuses two inputs") as info:
        ResNetAblationOptions(attention={"type": "aff", "options": {"channels": 256, "paired_input": True}})
    assert info.value.key == "attention.type"
