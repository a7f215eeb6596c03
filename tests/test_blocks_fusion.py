"""Selective Kernel conv and the attentional-fusion family (MS-CAM, DAF, AFF, iAFF).

Twins equivalent on every shipped spec, options validated once for spec and
Python, and the torch twins right against numpy formulas of the papers.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from crossattn.blocks.attentional_fusion import (AttentionalFusionOptions, DirectAddFusionOptions,
                                                  IterativeAttentionalFusionOptions, MSCAMOptions)
from crossattn.blocks.selective_kernel import SelectiveKernelOptions
from crossattn.check import check_spec
from crossattn.conventions import BN_MOMENTUM_TORCH, PADDLE_BN_MOMENTUM_EFFECTIVE
from crossattn.errors import OptionError, SpecError
from crossattn.frameworks import adapter
from crossattn.init import initial_state
from crossattn.spec import Spec, load_spec, resolve_spec
from tests.helpers import assert_twins_equivalent

SHIPPED = ["selective_kernel_2_paths", "selective_kernel_3_paths", "selective_kernel_stride2",
           "ms_cam_default", "daf_paired", "aff_paired", "iaff_paired"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_are_equivalent(name):
    cases = assert_twins_equivalent(load_spec(resolve_spec(name)))
    if name != "daf_paired":
        train = next(c for c in cases if c.mode == "train")
        assert any(c.category == "running_stat" for c in train.comparisons)


def test_daf_has_no_parameters_and_is_still_compared():
    cases = assert_twins_equivalent(load_spec(resolve_spec("daf_paired")))
    for case in cases:
        assert [c.tensor for c in case.comparisons] == ["output", "input.grad"]


def test_selective_kernel_with_one_output_channel_per_group():
    spec = Spec("selective_kernel", SelectiveKernelOptions(in_channels=4, groups=4, reduction=1, min_dim=2),
                name="sk-depthwise", input_shape=(3, 4, 5, 5))
    assert_twins_equivalent(spec)


def test_aff_with_the_papers_scale_is_equivalent():
    spec = Spec("aff", AttentionalFusionOptions(channels=4, reduction=2, paired_input=True, fusion_scale=1.0),
                name="aff-scale-1", input_shape=(2, 8, 4, 4))
    assert_twins_equivalent(spec)


# --- iAFF reusing the first global branch: its BatchNorms move twice per step ---------------------------------

def test_iaff_reuse_global_differs_only_in_the_double_updated_running_stats():
    """The check's running-statistics rule inverts ONE momentum step; the reused global branch takes two.

    Everything else (output, input and parameter gradients, every other running
    statistic) must pass; the twice-updated statistics are verified by replay below.
    """
    cases = check_spec(load_spec(resolve_spec("iaff_reuse_global")))
    for case in cases:
        failed = {c.tensor for c in case.failures}
        if case.mode == "eval":
            assert not failed, case
        else:
            assert failed <= {f"global_att.{i}.{name}" for i in (1, 4)
                              for name in ("running_mean", "running_var", "_mean", "_variance")}, failed


def test_iaff_reuse_global_running_stats_follow_two_momentum_steps_in_both_twins():
    from weight_transfer import transfer

    spec = load_spec(resolve_spec("iaff_reuse_global"))
    layers = ("global_att.1", "global_att.4")
    torch_model, torch_fw = _built(spec, "torch")
    paddle_model, paddle_fw = _built(spec, "paddle")
    init = initial_state(torch_fw.slots(torch_model), torch_fw.state(torch_model), "torch", 0, mode="check")
    paddle_init, _ = transfer(init, "torch", paddle_fw.slots(paddle_model), "paddle")
    torch_fw.load_state(torch_model, init)
    paddle_fw.load_state(paddle_model, paddle_init)
    x = np.random.default_rng(3).standard_normal(spec.input_shape)
    cotangent = lambda shape: np.random.default_rng(4).standard_normal(shape)  # noqa: E731
    torch_calls = _record_batch_statistics(torch_model, "torch", layers)
    paddle_calls = _record_batch_statistics(paddle_model, "paddle", layers)
    torch_state = torch_fw.step(torch_model, x, cotangent, train=True).state
    paddle_state = paddle_fw.step(paddle_model, x, cotangent, train=True).state
    m, keep = BN_MOMENTUM_TORCH, PADDLE_BN_MOMENTUM_EFFECTIVE
    for layer in layers:
        assert len(torch_calls[layer]) == len(paddle_calls[layer]) == 2
        for (mean_t, var_t, _), (mean_p, var_p, _) in zip(torch_calls[layer], paddle_calls[layer]):
            np.testing.assert_allclose(mean_p, mean_t, rtol=0, atol=1e-12)
            np.testing.assert_allclose(var_p, var_t, rtol=0, atol=1e-12)
        running_mean_t, running_var_t = init[f"{layer}.running_mean"], init[f"{layer}.running_var"]
        running_mean_p, running_var_p = running_mean_t.copy(), running_var_t.copy()
        for batch_mean, batch_var, count in torch_calls[layer]:
            running_mean_t = (1 - m) * running_mean_t + m * batch_mean
            running_var_t = (1 - m) * running_var_t + m * batch_var * count / (count - 1)
            running_mean_p = keep * running_mean_p + (1 - keep) * batch_mean
            running_var_p = keep * running_var_p + (1 - keep) * batch_var
        np.testing.assert_allclose(torch_state[f"{layer}.running_mean"], running_mean_t, rtol=0, atol=1e-12)
        np.testing.assert_allclose(torch_state[f"{layer}.running_var"], running_var_t, rtol=0, atol=1e-12)
        np.testing.assert_allclose(paddle_state[f"{layer}._mean"], running_mean_p, rtol=0, atol=1e-12)
        np.testing.assert_allclose(paddle_state[f"{layer}._variance"], running_var_p, rtol=0, atol=1e-12)


def _built(spec: Spec, framework: str):
    from crossattn import registry

    fw = adapter(framework)
    fw.setup("cpu")
    return fw.to_dtype(registry.build(spec, framework), "float64"), fw


def _record_batch_statistics(model, framework: str, layers: tuple[str, ...]) -> dict[str, list]:
    """Per call: the batch mean, biased variance and values per channel a BatchNorm saw."""
    calls: dict[str, list] = {name: [] for name in layers}
    named = dict(model.named_modules()) if framework == "torch" else dict(model.named_sublayers())

    def hook_for(name):
        def hook(_layer, inputs):
            values = inputs[0].detach().numpy() if framework == "torch" else inputs[0].numpy()
            axes = tuple(i for i in range(values.ndim) if i != 1)
            calls[name].append((values.mean(axes), values.var(axes), values.size // values.shape[1]))
        return hook

    for name in layers:
        named[name].register_forward_pre_hook(hook_for(name))
    return calls


# --- numpy references --------------------------------------------------------------------------------------

def _random_torch(block):
    fw = adapter("torch")
    block = block.double()
    fw.load_state(block, initial_state(fw.slots(block), fw.state(block), "torch", 7, mode="check"))
    return block


def _np(tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _batch_norm(x: np.ndarray, layer, train: bool) -> np.ndarray:
    axes = tuple(i for i in range(x.ndim) if i != 1)
    shape = [1, -1] + [1] * (x.ndim - 2)
    if train:
        mean, var = x.mean(axes), x.var(axes)
    else:
        mean, var = _np(layer.running_mean), _np(layer.running_var)
    normalised = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + layer.eps)
    return normalised * _np(layer.weight).reshape(shape) + _np(layer.bias).reshape(shape)


def _bottleneck(x: np.ndarray, seq, train: bool) -> np.ndarray:
    def pointwise(v, conv):
        return np.einsum("oc,nchw->nohw", _np(conv.weight)[:, :, 0, 0], v)

    hidden = np.maximum(_batch_norm(pointwise(x, seq[0]), seq[1], train), 0)
    return _batch_norm(pointwise(hidden, seq[3]), seq[4], train)


def _ms_cam(x: np.ndarray, local_att, global_att, train: bool) -> np.ndarray:
    logits = _bottleneck(x, local_att, train) + _bottleneck(x.mean((2, 3), keepdims=True), global_att, train)
    return 1 / (1 + np.exp(-logits))


def _pair(seed: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, channels, 3, 4)), rng.standard_normal((3, channels, 3, 4))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("scale", [2.0, 1.0])
def test_aff_matches_the_fusion_formula(train, scale):
    import torch

    from torch_impl.blocks.attentional_fusion import AttentionalFusion

    block = _random_torch(AttentionalFusion(channels=4, reduction=2, fusion_scale=scale)).train(train)
    x, r = _pair(1, 4)
    weight = _ms_cam(x + r, block.local_att, block.global_att, train)
    expected = scale * x * weight + scale * r * (1 - weight)
    got = _np(block(torch.from_numpy(x), torch.from_numpy(r)))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reuse_global", [False, True])
def test_iaff_matches_the_two_stage_formula(reuse_global):
    import torch

    from torch_impl.blocks.attentional_fusion import IterativeAttentionalFusion

    block = _random_torch(IterativeAttentionalFusion(channels=4, reduction=2, reuse_global=reuse_global)).eval()
    assert (block.global_att2 is None) == reuse_global
    x, r = _pair(2, 4)
    w1 = _ms_cam(x + r, block.local_att, block.global_att, train=False)
    initial = x * w1 + r * (1 - w1)
    second_global = block.global_att if reuse_global else block.global_att2
    w2 = _ms_cam(initial, block.local_att2, second_global, train=False)
    expected = x * w2 + r * (1 - w2)
    np.testing.assert_allclose(_np(block(torch.from_numpy(x), torch.from_numpy(r))), expected,
                               rtol=1e-12, atol=1e-12)


def test_ms_cam_matches_its_formula_in_training():
    import torch

    from torch_impl.blocks.attentional_fusion import MSCAM

    block = _random_torch(MSCAM(channels=4, reduction=2)).train()
    x, _ = _pair(3, 4)
    expected = x * _ms_cam(x, block.local_att, block.global_att, train=True)
    np.testing.assert_allclose(_np(block(torch.from_numpy(x))), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("select_bias", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_selective_kernel_softmax_runs_across_paths(train, select_bias):
    import torch

    from torch_impl.blocks.selective_kernel import SelectiveKernelConv

    block = _random_torch(SelectiveKernelConv(in_channels=4, paths=3, groups=2, reduction=2, min_dim=3,
                                              select_bias=select_bias))
    assert all((p.bias is not None) == select_bias for p in block.projections)  # paper: A_i z, no bias
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 4, 5, 5)))
    block.train(train)
    got = _np(block(x))
    with torch.no_grad():
        features = np.stack([_np(path(x)) for path in block.paths], axis=1)  # (B, M, C, H, W)
    descriptor = features.sum(1).mean((2, 3))
    compressed = np.maximum(_batch_norm(descriptor @ _np(block.compress[0].weight).T, block.compress[1], train), 0)
    scores = np.stack([compressed @ _np(p.weight).T + (_np(p.bias) if select_bias else 0.0)
                       for p in block.projections], axis=1)
    weights = np.exp(scores - scores.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)  # (B, M, C): each channel's weights over the paths sum to one
    expected = (features * weights[..., None, None]).sum(1)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_selective_kernel_paths_keep_the_spatial_size():
    import torch

    from torch_impl.blocks.selective_kernel import SelectiveKernelConv

    block = SelectiveKernelConv(in_channels=4, out_channels=8, stride=2, paths=3, groups=2, min_dim=2).double()
    out = block(torch.zeros(2, 4, 7, 6, dtype=torch.float64))
    assert tuple(out.shape) == (2, 8, block.options.output_size(7), block.options.output_size(6)) == (2, 8, 4, 3)
    assert [p[0].dilation for p in block.paths] == [(1, 1), (2, 2), (3, 3)]


# --- paired input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_paired_input_is_the_pair_stacked_along_channels(framework):
    x, r = _pair(6, 4)
    if framework == "torch":
        import torch as lib

        from torch_impl.blocks.attentional_fusion import AttentionalFusion, DirectAddFusion
        tensor, concat = lib.from_numpy, lambda a, b: lib.cat([a, b], dim=1)
    else:
        import paddle as lib

        from paddle_impl.blocks.attentional_fusion import AttentionalFusion, DirectAddFusion
        tensor, concat = lib.to_tensor, lambda a, b: lib.concat([a, b], axis=1)
    for cls in (AttentionalFusion, DirectAddFusion):
        block = cls(channels=4, paired_input=True)
        block.eval()
        block.to(dtype=lib.float64)
        separate = block(tensor(x), tensor(r)).detach().numpy()
        paired = block(concat(tensor(x), tensor(r))).detach().numpy()
        np.testing.assert_array_equal(paired, separate)


def test_a_fusion_block_without_residual_or_paired_input_says_how_to_call_it():
    import torch

    from torch_impl.blocks.attentional_fusion import AttentionalFusion

    with pytest.raises(TypeError, match="paired_input"):
        AttentionalFusion(channels=4)(torch.zeros(2, 4, 3, 3))


# --- option validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,key", [
    ({"in_channels": 12, "groups": 8}, "groups"),
    ({"in_channels": 8, "out_channels": 12, "groups": 8}, "groups"),
    ({"in_channels": 8, "groups": 8, "paths": 0}, "paths"),
    ({"in_channels": 8, "groups": 8, "stride": 0}, "stride"),
    ({"in_channels": 8, "groups": 8, "min_dim": 0}, "min_dim"),
    ({"in_channels": 8, "groups": 8, "reduction": 0}, "reduction"),
    ({"in_channels": 8, "groups": 8, "paths": 2.0}, "paths"),
])
def test_selective_kernel_rejects_bad_options(options, key):
    with pytest.raises(OptionError) as info:
        SelectiveKernelOptions(**options)
    assert info.value.key == key


def test_selective_kernel_default_groups_need_channels_divisible_by_32():
    with pytest.raises(OptionError, match="groups"):
        SelectiveKernelOptions(in_channels=16)
    assert SelectiveKernelOptions(in_channels=64).reduced_dim == 32  # d = max(64 // 16, 32)
    assert SelectiveKernelOptions(in_channels=1024).reduced_dim == 64


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_direct_construction_validates_like_a_spec(framework):
    import importlib

    module = importlib.import_module(f"{framework}_impl.blocks.selective_kernel")
    with pytest.raises(OptionError) as info:
        module.SelectiveKernelConv(in_channels=6, groups=4)
    assert info.value.key == "groups"
    fusion = importlib.import_module(f"{framework}_impl.blocks.attentional_fusion")
    with pytest.raises(OptionError) as info:
        fusion.IterativeAttentionalFusion(channels=6, reduction=4)
    assert info.value.key == "reduction"


@pytest.mark.parametrize("cls,options,key", [
    (MSCAMOptions, {"channels": 6, "reduction": 4}, "reduction"),
    (MSCAMOptions, {"channels": 0}, "channels"),
    (AttentionalFusionOptions, {"channels": 8, "fusion_scale": "2"}, "fusion_scale"),
    (IterativeAttentionalFusionOptions, {"channels": 8, "reuse_global": "yes"}, "reuse_global"),
    (DirectAddFusionOptions, {"channels": -1}, "channels"),
])
def test_fusion_options_reject_bad_values(cls, options, key):
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert info.value.key == key


@pytest.mark.parametrize("opts,shape,fragment", [
    (AttentionalFusionOptions(channels=8), (2, 16, 4, 4), "paired_input"),
    (AttentionalFusionOptions(channels=8, paired_input=True), (2, 8, 4, 4), r"2 \* channels = 16"),
    (IterativeAttentionalFusionOptions(channels=8, paired_input=True), (1, 16, 4, 4), "batch of at least 2"),
    (DirectAddFusionOptions(channels=8, paired_input=True), (2, 16, 4), "4-dimensional"),
    (MSCAMOptions(channels=8), (2, 16, 4, 4), "does not match channels"),
    (SelectiveKernelOptions(in_channels=8, groups=8), (1, 8, 4, 4), "batch of at least 2"),
    (SelectiveKernelOptions(in_channels=8, groups=8), (2, 4, 4, 4), "in_channels"),
])
def test_input_shapes_that_cannot_be_fed_are_rejected(opts, shape, fragment):
    with pytest.raises(OptionError, match=fragment) as info:
        opts.check_input_shape(shape)
    assert info.value.key == "input_shape"


def _spec_error(tmp_path, text: str) -> SpecError:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value


def test_spec_file_with_groups_not_dividing_channels_names_key_and_line(tmp_path):
    err = _spec_error(tmp_path, """\
        type: selective_kernel
        input_shape: [2, 12, 8, 8]
        options:
          in_channels: 12
          groups: 8
        """)
    assert err.key == "options.groups" and err.line == 5
    assert "must divide in_channels (12)" in err.message


def test_spec_file_feeding_one_tensor_to_a_fusion_block_asks_for_paired_input(tmp_path):
    err = _spec_error(tmp_path, """\
        type: iaff
        input_shape: [2, 8, 8, 8]
        options:
          channels: 8
        """)
    assert err.key == "input_shape" and err.line == 2
    assert "paired_input: true" in err.message
