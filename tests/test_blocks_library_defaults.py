"""The `*_timm` specs against plain-torch rewrites of timm's blocks at their defaults.

Each reference below is written from timm's timm/layers sources (SEModule, CbamModule,
EcaModule, GlobalContext, SelectiveKernel, NonLocalAttn), with timm's own width rounding
(`make_divisible`), and reads the twin's weights under timm's layout (1x1 conv kernels, one
selection conv for all paths, LayerNorm over channels). Both twins must match it forward and in
the input gradient, the torch twin in every parameter gradient too, in train and eval mode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossattn import registry
from crossattn.blocks.cbam import CBAMOptions
from crossattn.blocks.eca import ECAOptions
from crossattn.blocks.se import SEOptions, squeezed_channels
from crossattn.blocks.selective_kernel import SelectiveKernelOptions
from crossattn.conventions import BN_EPSILON
from crossattn.errors import OptionError
from crossattn.spec import load_spec, resolve_spec
from crossattn.tolerances import FLOAT64


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding, as its helpers define it (floats and all)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _bn(t, w, prefix, train):
    """timm's BatchNorm2d, with crossattn's epsilon: float32(1e-5), the value paddle holds. Against
    timm's exact 1e-5 a train-mode gradient through a small-variance channel moves by ~1e-9."""
    from torch.nn import functional as F

    return F.batch_norm(t, w[f"{prefix}.running_mean"].detach().clone(), w[f"{prefix}.running_var"].detach().clone(),
                        w[f"{prefix}.weight"], w[f"{prefix}.bias"], training=train, momentum=0.1, eps=BN_EPSILON)


def _conv1x1(t, weight, bias=None):
    from torch.nn import functional as F

    if weight.ndim == 2:  # a Linear weight [out, in] read as timm's 1x1 conv kernel
        weight = weight.reshape(*weight.shape, 1, 1)
    return F.conv2d(t, weight, bias)


def se_ref(x, w, train):
    import torch

    s = x.mean((2, 3), keepdim=True)
    s = torch.relu(_conv1x1(s, w["fc1.weight"], w["fc1.bias"]))
    return x * torch.sigmoid(_conv1x1(s, w["fc2.weight"], w["fc2.bias"]))


def cbam_ref(x, w, train):
    import torch
    from torch.nn import functional as F

    def mlp(d):
        return _conv1x1(torch.relu(_conv1x1(d, w["channel_gate.fc1.weight"])), w["channel_gate.fc2.weight"])

    x = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    kernel = w["spatial_gate.conv.weight"]
    attn = F.conv2d(attn, kernel, padding=((1 - 1) + 1 * (kernel.shape[-1] - 1)) // 2)
    return x * torch.sigmoid(_bn(attn, w, "spatial_gate.norm", train))


def eca_ref(x, w, train):
    import torch
    from torch.nn import functional as F

    channels = x.shape[1]
    t = int(abs(math.log(channels, 2) + 1) / 2)
    kernel_size = max(t if t % 2 else t + 1, 3)
    assert tuple(w["conv.weight"].shape) == (1, 1, kernel_size)
    y = x.mean((2, 3)).view(x.shape[0], 1, -1)
    y = F.conv1d(y, w["conv.weight"], padding=(kernel_size - 1) // 2)
    return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)


def gc_ref(x, w, train):
    import torch
    from torch.nn import functional as F

    b, c, h, wd = x.shape
    attn = F.softmax(_conv1x1(x, w["key.weight"], w["key.bias"]).reshape(b, 1, h * wd), dim=-1).unsqueeze(3)
    context = (x.reshape(b, c, h * wd).unsqueeze(1) @ attn).view(b, c, 1, 1)
    hidden = _conv1x1(context, w["transform_mul.0.weight"], w["transform_mul.0.bias"])
    width = hidden.shape[1]
    hidden = F.layer_norm(hidden.permute(0, 2, 3, 1), (width,), w["transform_mul.1.weight"].reshape(width),
                          w["transform_mul.1.bias"].reshape(width), 1e-6).permute(0, 3, 1, 2)
    out = _conv1x1(torch.relu(hidden), w["transform_mul.3.weight"], w["transform_mul.3.bias"])
    return x * torch.sigmoid(out)


def sk_ref(x, w, train):
    import torch
    from torch.nn import functional as F

    paths = 2
    parts = torch.split(x, x.shape[1] // paths, 1)
    outs = []
    for i, part in enumerate(parts):
        dilation = 1 * (2 * i + 3 - 1) // 2  # timm keeps 3x3 kernels and dilates the 5x5 path by 2
        y = F.conv2d(part, w[f"paths.{i}.0.weight"], padding=((1 - 1) + dilation * 2) // 2, dilation=dilation)
        outs.append(torch.relu(_bn(y, w, f"paths.{i}.1", train)))
    stacked = torch.stack(outs, dim=1)
    a = stacked.sum(1).mean((2, 3), keepdim=True)
    a = torch.relu(_bn(_conv1x1(a, w["compress.0.weight"]), w, "compress.1", train))
    select = torch.cat([w[f"projections.{i}.weight"] for i in range(paths)], dim=0)  # timm's one fc_select
    a = _conv1x1(a, select)
    b, c = a.shape[:2]
    a = torch.softmax(a.view(b, paths, c // paths, 1, 1), dim=1)
    return (stacked * a).sum(1)


def nl_ref(x, w, train):
    import torch

    scale = x.shape[1] ** -0.5
    t = _conv1x1(x, w["theta.weight"], w["theta.bias"])
    p = _conv1x1(x, w["phi.weight"], w["phi.bias"])
    g = _conv1x1(x, w["g.weight"], w["g.bias"])
    b, c, h, wd = t.shape
    att = torch.softmax(torch.bmm(t.view(b, c, -1).permute(0, 2, 1), p.view(b, c, -1)) * scale, dim=2)
    y = torch.bmm(att, g.view(b, c, -1).permute(0, 2, 1)).permute(0, 2, 1).reshape(b, c, h, wd)
    return _bn(_conv1x1(y, w["W.0.weight"], w["W.0.bias"]), w, "W.1", train) + x


REFERENCES = {"se_timm": se_ref, "cbam_timm": cbam_ref, "eca_timm": eca_ref, "global_context_timm": gc_ref,
              "selective_kernel_timm": sk_ref, "non_local_timm": nl_ref}


def _close(name, got, want):
    diff = float(np.max(np.abs(got - want)))
    rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))
    assert diff <= FLOAT64.atol or rel <= FLOAT64.rtol, f"{name}: max |diff| {diff:.3g}, norm-rel {rel:.3g}"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("spec_name", sorted(REFERENCES))
def test_timm_spec_matches_timm_defaults(spec_name, train):
    import torch

    from crossattn.frameworks import adapter
    from crossattn.init import initial_state
    from weight_transfer import transfer

    spec = load_spec(resolve_spec(spec_name))
    torch_adapter, paddle_adapter = adapter("torch"), adapter("paddle")
    torch_model = torch_adapter.to_dtype(registry.build(spec, "torch"), "float64")
    weights = initial_state(torch_adapter.slots(torch_model), torch_adapter.state(torch_model), "torch", seed=4,
                            mode="check")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(spec.input_shape)
    cotangent = rng.standard_normal(spec.input_shape)

    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=not k.endswith(("running_mean", "running_var")))
              for k, v in weights.items() if "num_batches" not in k}
    xt = torch.tensor(x, requires_grad=True)
    want = REFERENCES[spec_name](xt, params, train)
    want.backward(torch.tensor(cotangent))

    torch_adapter.load_state(torch_model, weights)
    paddle_model = paddle_adapter.to_dtype(registry.build(spec, "paddle"), "float64")
    paddle_adapter.load_state(paddle_model, transfer(weights, "torch", paddle_adapter.slots(paddle_model), "paddle")[0])
    for framework, model in (("torch", torch_model), ("paddle", paddle_model)):
        got = adapter(framework).step(model, x, lambda s: cotangent, train=train)
        _close(f"{framework} output", got.output, want.detach().numpy())
        _close(f"{framework} input grad", got.input_grad, xt.grad.numpy())
        if framework == "torch":
            for key, grad in got.param_grads.items():
                _close(f"{key} grad", grad, params[key].grad.numpy().reshape(grad.shape))


def test_half_up_widths_are_timms():
    for reduction in (4, 8, 16):
        for channels in range(1, 1025):
            v = channels / reduction
            assert squeezed_channels(channels, reduction, "half_up", 8) == make_divisible(v, 8, round_limit=0.0)
            assert squeezed_channels(channels, reduction, "half_up") == make_divisible(v, 1, round_limit=0.0)
            assert squeezed_channels(channels, reduction, "floor") == max(channels // reduction, 1)
            assert squeezed_channels(channels, reduction, "round") == max(round(v), 1)


def test_each_option_changes_what_it_names():
    assert SEOptions(channels=96).squeeze == 6
    assert SEOptions(channels=96, rounding="half_up", width_divisor=8).squeeze == 8
    assert CBAMOptions(channels=24).hidden == 1
    assert CBAMOptions(channels=24, rounding="half_up").hidden == 2
    assert CBAMOptions(channels=24, hidden_channels=5).hidden == 5
    assert ECAOptions(channels=4).kernel == 1
    assert ECAOptions(channels=4, min_kernel_size=3).kernel == 3
    assert ECAOptions(channels=256, min_kernel_size=3).kernel == 5  # the bound only lifts small kernels
    assert SelectiveKernelOptions(in_channels=64, groups=1, split_input=True).path_in_channels == 32
    assert SelectiveKernelOptions(in_channels=64, groups=1).path_in_channels == 64


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_options_build_the_layers_they_name(framework):
    from crossattn.frameworks import adapter
    from crossattn.spec import Spec
    from crossattn.blocks.global_context import GlobalContextOptions
    from crossattn.blocks.non_local import NonLocalOptions

    def shapes(type_name, options, input_shape):
        model = registry.build(Spec(type_name, options, name="probe", input_shape=input_shape), framework)
        return {k: s.shape for k, s in adapter(framework).slots(model).items()}

    plain = shapes("cbam", CBAMOptions(channels=24), (2, 24, 4, 4))
    timm = shapes("cbam", CBAMOptions(channels=24, rounding="half_up", mlp_bias=False, spatial_norm=True,
                                      use_conv=True), (2, 24, 4, 4))
    assert "channel_gate.fc1.bias" in plain and "channel_gate.fc1.bias" not in timm
    assert timm["channel_gate.fc1.weight"] == (2, 24, 1, 1)
    assert not any(k.startswith("spatial_gate.norm") for k in plain)
    assert any(k.startswith("spatial_gate.norm") for k in timm)
    split = shapes("selective_kernel", SelectiveKernelOptions(in_channels=16, groups=1, min_dim=4,
                                                               split_input=True), (2, 16, 4, 4))
    assert split["paths.0.0.weight"] == (16, 8, 3, 3)
    gc = registry.build(Spec("global_context", GlobalContextOptions(in_channels=16, reduction=4, norm_epsilon=1e-6),
                             name="probe", input_shape=(2, 16, 4, 4)), framework)
    norm = gc.transform_add[1]
    assert math.isclose(getattr(norm, "eps", getattr(norm, "_epsilon", None)), 1e-6, rel_tol=1e-7)
    nl = NonLocalOptions(in_channels=64, inter_channels=8, use_scale=True, scale_by="in_channels")
    assert nl.scale == 1 / 8 and NonLocalOptions(in_channels=64, inter_channels=16, use_scale=True).scale == 1 / 4


@pytest.mark.parametrize("cls,options,key", [
    (SEOptions, {"channels": 8, "width_divisor": 0}, "width_divisor"),
    (SEOptions, {"channels": 8, "squeeze_channels": 4, "width_divisor": 8}, "width_divisor"),
    (CBAMOptions, {"channels": 8, "hidden_channels": 0}, "hidden_channels"),
    (CBAMOptions, {"channels": 8, "hidden_channels": 2, "rounding": "half_up"}, "hidden_channels"),
    (CBAMOptions, {"channels": 8, "no_spatial": True, "spatial_norm": True}, "spatial_norm"),
    (CBAMOptions, {"channels": 8, "rounding": "ceil"}, "rounding"),
    (ECAOptions, {"channels": 8, "min_kernel_size": 2}, "min_kernel_size"),
    (ECAOptions, {"channels": 8, "kernel_size": 5, "min_kernel_size": 3}, "min_kernel_size"),
    (SelectiveKernelOptions, {"in_channels": 9, "groups": 1, "paths": 2, "split_input": True}, "split_input"),
    (SelectiveKernelOptions, {"in_channels": 16, "groups": 16, "split_input": True}, "groups"),
])
def test_bad_new_options_name_the_key(cls, options, key):
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert info.value.key == key


@pytest.mark.parametrize("value", [0.0, -1e-6, float("nan"), float("inf")])
def test_bad_norm_epsilon_is_refused(value):
    from crossattn.blocks.global_context import GlobalContextOptions

    with pytest.raises(OptionError) as info:
        GlobalContextOptions(in_channels=16, norm_epsilon=value)
    assert info.value.key == "norm_epsilon"
