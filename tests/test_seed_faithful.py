"""Seed 004's four non-local classes against a direct plain-torch reading of its code.

The reference below is written from the seed's forward passes, not from the twins: flatten
theta, phi and g to (B, C', N); multiply theta by phi transposed (a C' x C' matrix); softmax
over the last axis (or divide by the height for the dot product); multiply by g; reshape to
(B, C', H, W); BatchNorm(conv(.)) and add the input. Both twins, built from the shipped
seed-faithful specs, must agree with it forward and in every gradient, in train and eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest

from crossattn import registry
from crossattn.conventions import BN_EPSILON
from crossattn.errors import OptionError
from crossattn.spec import load_spec, resolve_spec
from crossattn.tolerances import FLOAT64

#: shipped block spec -> (seed class, its pairwise function)
SEED_CLASSES = {
    "non_local_seed004_embedded_gaussian": "EmbeddedGaussion",
    "non_local_seed004_gaussian": "VanillaGaussion",
    "non_local_seed004_dot_product": "DotProduction",
    "non_local_seed004_no_bottleneck": "EmbeddedGaussionNoBottleNeck",
}


def _seed_forward(seed_class: str, x, w, running_mean, running_var, train: bool):
    """Seed 004's forward pass for `seed_class`, in plain torch; `w` holds the twin's torch names."""
    import torch
    from torch.nn import functional as F

    def conv(name, t):
        return F.conv2d(t, w[f"{name}.weight"], w[f"{name}.bias"])

    shape = x.shape
    if seed_class == "VanillaGaussion":
        theta = torch.flatten(x, 2)
        phi = torch.flatten(x, 2)
    else:
        theta = torch.flatten(conv("theta", x), 2)
        phi = torch.flatten(conv("phi", x), 2)
    g = torch.flatten(conv("g", x), 2)
    non_local = torch.matmul(theta, phi.transpose(1, 2))
    if seed_class == "DotProduction":
        non_local = non_local / shape[2]
    else:
        non_local = torch.softmax(non_local, dim=-1)
    non_local = torch.matmul(non_local, g)
    non_local = non_local.reshape(shape[0], -1, shape[2], shape[3])
    out = F.batch_norm(conv("W.0", non_local), running_mean, running_var, w["W.1.weight"], w["W.1.bias"],
                       training=train, momentum=0.1, eps=BN_EPSILON)
    return out + x


def _reference(seed_class: str, weights: dict[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray,
               train: bool) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    import torch

    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in weights.items() if not k.startswith("W.1.running") and "num_batches" not in k}
    xt = torch.tensor(x, requires_grad=True)
    out = _seed_forward(seed_class, xt, params, torch.tensor(weights["W.1.running_mean"]).clone(),
                        torch.tensor(weights["W.1.running_var"]).clone(), train)
    out.backward(torch.tensor(cotangent))
    return out.detach().numpy(), xt.grad.numpy(), {k: p.grad.numpy() for k, p in params.items()}


def _twin(framework: str, spec, torch_weights, x, cotangent, train):
    from crossattn.frameworks import adapter
    from weight_transfer import transfer

    fw = adapter(framework)
    model = fw.to_dtype(registry.build(spec, framework), "float64")
    weights = torch_weights
    if framework == "paddle":
        weights, _ = transfer(torch_weights, "torch", fw.slots(model), "paddle")
    fw.load_state(model, weights)
    return fw.step(model, x, lambda s: cotangent, train=train)


def _assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    diff = float(np.max(np.abs(got - want)))
    rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))
    assert diff <= FLOAT64.atol or rel <= FLOAT64.rtol, f"{name}: max |diff| {diff:.3g}, norm-rel {rel:.3g}"


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("spec_name", sorted(SEED_CLASSES))
def test_twins_rebuild_the_seed_classes(spec_name, train, framework):
    from crossattn.frameworks import adapter
    from crossattn.init import initial_state

    spec = load_spec(resolve_spec(spec_name))
    torch_adapter = adapter("torch")
    probe = torch_adapter.to_dtype(registry.build(spec, "torch"), "float64")
    weights = initial_state(torch_adapter.slots(probe), torch_adapter.state(probe), "torch", seed=5, mode="check")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, spec.input_shape)
    cotangent = rng.standard_normal(spec.input_shape)

    want_out, want_dx, want_grads = _reference(SEED_CLASSES[spec_name], weights, x, cotangent, train)
    got = _twin(framework, spec, weights, x, cotangent, train)
    _assert_close("output", got.output, want_out)
    _assert_close("input grad", got.input_grad, want_dx)
    for key, grad in want_grads.items():  # conv and BN weight/bias carry the same names in both twins
        _assert_close(f"{key} grad", got.param_grads[key], grad)
    assert len(want_grads) == len(got.param_grads)
    # the check's own precondition: the reference is not trivially the input
    assert np.abs(want_out - x).max() > 1e-3


@pytest.mark.parametrize("spec_name", sorted(SEED_CLASSES))
def test_the_paper_affinity_is_not_the_seed_code(spec_name):
    """Without `affinity: channels` the same options give a different block: the option is needed."""
    import dataclasses

    from crossattn.frameworks import adapter
    from crossattn.init import initial_state
    from crossattn.spec import Spec

    spec = load_spec(resolve_spec(spec_name))
    paper = Spec("non_local", dataclasses.replace(spec.options, affinity="positions"), name="paper",
                 input_shape=spec.input_shape)
    torch_adapter = adapter("torch")
    probe = torch_adapter.to_dtype(registry.build(spec, "torch"), "float64")
    weights = initial_state(torch_adapter.slots(probe), torch_adapter.state(probe), "torch", seed=5, mode="check")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, spec.input_shape)
    cotangent = rng.standard_normal(spec.input_shape)
    want, _, _ = _reference(SEED_CLASSES[spec_name], weights, x, cotangent, train=False)
    got = _twin("torch", paper, weights, x, cotangent, train=False).output
    assert np.abs(got - want).max() > 1e-3


def test_the_seed_ablation_uses_the_seed_faithful_models():
    from pathlib import Path

    from crossattn.training.ablation import load_ablation, resolve_ablation

    ablation = load_ablation(resolve_ablation("seed004_faithful"))
    assert ablation.baseline.stem == "resnet18_baseline"
    assert len(ablation.variants) == 4
    for path in ablation.variants:
        block = load_spec(Path(path)).options.attention.options
        assert block.affinity == "channels" and not block.sub_sample
        assert block.zero_init == (block.mode == "embedded_gaussian" and block.reduction == 2)
        assert (block.normalize_by == "height") == (block.mode == "dot_product")


@pytest.mark.parametrize("options,key", [
    ({"affinity": "channels"}, "affinity"),  # sub_sample is on by default
    ({"affinity": "channels", "sub_sample": False, "mode": "concatenation"}, "affinity"),
    ({"affinity": "channels", "sub_sample": False, "mode": "gaussian"}, "affinity"),  # g at C/2
    ({"affinity": "channels", "sub_sample": False, "use_scale": True}, "affinity"),
    ({"affinity": "pixels"}, "affinity"),
])
def test_channel_affinity_refuses_what_it_cannot_build(options, key):
    from crossattn.blocks.non_local import NonLocalOptions

    with pytest.raises(OptionError) as info:
        NonLocalOptions(in_channels=8, **options)
    assert info.value.key == key
