"""The fused (memory-linear) non-local path: equal to the explicit path in each framework and
across frameworks, forward and backward; torch really on its flash kernel; paddle's chunked path
never holding the N x Nk matrix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crossattn import registry
from crossattn.blocks.non_local import NonLocalOptions
from crossattn.errors import OptionError
from crossattn.spec import Spec, load_spec, resolve_spec
from crossattn.tolerances import FLOAT32, FLOAT64
from tests.helpers import assert_twins_equivalent

SHAPES = {1: (2, 8, 10), 2: (2, 8, 6, 5), 3: (2, 8, 2, 4, 4)}
VARIANTS = [
    {"mode": "embedded_gaussian"},
    {"mode": "embedded_gaussian", "sub_sample": False},
    {"mode": "embedded_gaussian", "use_scale": True, "scale_by": "in_channels"},
    {"mode": "embedded_gaussian", "dimension": 1},
    {"mode": "embedded_gaussian", "dimension": 3},
    {"mode": "embedded_gaussian", "reduction": 1, "sub_sample": False, "bn_layer": False},
    {"mode": "gaussian"},  # theta = x: query width 8, value width 4 (padded for torch's kernel)
    {"mode": "gaussian", "reduction": 1, "sub_sample": False},
    {"mode": "dot_product"},
    {"mode": "dot_product", "sub_sample": False, "normalize_by": "height"},
]


def _spec(impl: str, **options) -> Spec:
    opts = NonLocalOptions(in_channels=8, attention_impl=impl, **options)
    return Spec("non_local", opts, name=f"nl-{impl}-{options}", input_shape=SHAPES[opts.dimension])


def _step(framework: str, spec: Spec, torch_weights, x, cotangent, train: bool, dtype: str = "float64"):
    from crossattn.frameworks import adapter
    from weight_transfer import transfer

    fw = adapter(framework)
    model = fw.to_dtype(registry.build(spec, framework), dtype)
    weights = torch_weights
    if framework == "paddle":
        weights, _ = transfer(torch_weights, "torch", fw.slots(model), "paddle")
    fw.load_state(model, {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in weights.items()})
    return fw.step(model, x.astype(dtype), lambda s: cotangent.astype(dtype), train=train)


def _weights(spec: Spec, seed: int = 3):
    from crossattn.frameworks import adapter
    from crossattn.init import initial_state

    fw = adapter("torch")
    model = fw.to_dtype(registry.build(spec, "torch"), "float64")
    return initial_state(fw.slots(model), fw.state(model), "torch", seed, mode="check")


def _assert_same(a, b, tol, what: str) -> None:
    pairs = [("output", a.output, b.output), ("input grad", a.input_grad, b.input_grad)]
    assert a.param_grads.keys() == b.param_grads.keys()
    pairs += [(f"{k} grad", a.param_grads[k], b.param_grads[k]) for k in a.param_grads]
    for name, got, want in pairs:
        diff = float(np.max(np.abs(got - want)))
        rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))
        assert diff <= tol.atol or rel <= tol.rtol, f"{what}: {name} max |diff| {diff:.3g}, norm-rel {rel:.3g}"


def _inputs(spec: Spec, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(spec.input_shape), rng.standard_normal(spec.input_shape)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fused_equals_explicit_in_each_framework(framework, options):
    explicit, fused = _spec("explicit", **options), _spec("fused", **options)
    weights = _weights(explicit)
    x, cotangent = _inputs(explicit)
    for train in (True, False):
        _assert_same(_step(framework, fused, weights, x, cotangent, train),
                     _step(framework, explicit, weights, x, cotangent, train), FLOAT64,
                     f"{framework} fused vs explicit, train={train}")


@pytest.mark.parametrize("options", VARIANTS[:1] + VARIANTS[6:7] + VARIANTS[8:9],
                         ids=["embedded_gaussian", "gaussian", "dot_product"])
def test_fused_equals_explicit_in_float32(options):
    """Eval mode: in train mode W.0's bias gradient is zero in exact arithmetic and pure float32 noise."""
    explicit, fused = _spec("explicit", **options), _spec("fused", **options)
    weights = _weights(explicit)
    x, cotangent = _inputs(explicit)
    for framework in ("torch", "paddle"):
        _assert_same(_step(framework, fused, weights, x, cotangent, False, "float32"),
                     _step(framework, explicit, weights, x, cotangent, False, "float32"), FLOAT32,
                     f"{framework} float32")


@pytest.mark.parametrize("pair", [("torch", "fused", "paddle", "explicit"), ("paddle", "fused", "torch", "explicit"),
                                  ("torch", "fused", "paddle", "fused")])
def test_fused_agrees_across_frameworks(pair):
    fw_a, impl_a, fw_b, impl_b = pair
    options = {"mode": "embedded_gaussian", "use_scale": True}
    weights = _weights(_spec("explicit", **options))
    x, cotangent = _inputs(_spec("explicit", **options))
    for train in (True, False):
        a = _step(fw_a, _spec(impl_a, **options), weights, x, cotangent, train)
        b = _step(fw_b, _spec(impl_b, **options), weights, x, cotangent, train)
        # parameter names are the same in both twins for convs and BatchNorm weight/bias
        b_grads = {k: b.param_grads[k] for k in a.param_grads}
        _assert_same(a, dataclasses.replace(b, param_grads=b_grads), FLOAT64, f"{pair}, train={train}")


@pytest.mark.parametrize("name", ["non_local_embedded_gaussian_fused", "non_local_gaussian_fused",
                                  "non_local_dot_product_fused"])
def test_shipped_fused_specs_pass_the_check(name):
    assert_twins_equivalent(load_spec(resolve_spec(name)))


def test_paddle_chunks_over_queries_and_keys(monkeypatch):
    """Tiny blocks force several query chunks and key blocks (the online softmax's rescaling)."""
    import paddle_impl.blocks.attention as attention
    from crossattn import attention_chunks as chunks

    options = {"mode": "embedded_gaussian", "sub_sample": False}
    explicit, fused = _spec("explicit", **options), _spec("fused", **options)
    weights = _weights(explicit)
    x, cotangent = _inputs(explicit)
    want = _step("paddle", explicit, weights, x, cotangent, True)
    seen = []

    def small(batch, queries, keys):
        plan = chunks.attention_chunks(batch, queries, keys, budget=2 * 7 * 4, max_key_chunk=4)
        seen.append(plan)
        return plan

    monkeypatch.setattr(attention, "attention_chunks", small)
    got = _step("paddle", fused, weights, x, cotangent, True)
    assert seen == [(7, 4)]  # 30 positions: 5 query chunks (the last of 2), 8 key blocks (the last of 2)
    _assert_same(got, want, FLOAT64, "paddle chunked")


def test_paddle_fused_never_builds_the_affinity(monkeypatch):
    """Every product in the fused forward and backward stays within one score block."""
    import paddle

    from crossattn.attention_chunks import attention_chunks
    from paddle_impl.blocks.attention import fused_attention

    batch, queries, keys, width = 1, 1200, 1100, 4
    largest = []
    original = paddle.matmul

    def recording(a, b, *args, **kwargs):
        out = original(a, b, *args, **kwargs)
        largest.append(int(np.prod(out.shape)))
        return out

    monkeypatch.setattr(paddle, "matmul", recording)
    rng = np.random.default_rng(0)
    q, k, v = (paddle.to_tensor(rng.standard_normal((batch, n, width)), stop_gradient=False)
               for n in (queries, keys, keys))
    out = fused_attention(q, k, v, 0.5)
    out.sum().backward()
    query_chunk, key_chunk = attention_chunks(batch, queries, keys)
    assert max(largest) <= batch * query_chunk * key_chunk < batch * queries * keys
    assert k.grad is not None and q.grad is not None and v.grad is not None


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian"])
def test_torch_fused_runs_on_the_flash_kernel(mode):
    """Restricted to the flash backend, an ineligible input (non-contiguous, widths unequal) raises."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = registry.build(_spec("fused", mode=mode), "torch").double()
    x = torch.randn(*SHAPES[2], dtype=torch.float64, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        model(x).sum().backward()
    assert x.grad is not None


def test_auto_fuses_where_it_can():
    assert NonLocalOptions(in_channels=8, attention_impl="auto").fused
    assert NonLocalOptions(in_channels=8, mode="dot_product", attention_impl="auto").fused
    assert not NonLocalOptions(in_channels=8, mode="concatenation", attention_impl="auto").fused
    assert not NonLocalOptions(in_channels=8, affinity="channels", sub_sample=False, attention_impl="auto").fused
    assert not NonLocalOptions(in_channels=8).fused


@pytest.mark.parametrize("options", [
    {"mode": "concatenation", "attention_impl": "fused"},
    {"affinity": "channels", "sub_sample": False, "attention_impl": "fused"},
    {"attention_impl": "flash"},
])
def test_fused_refuses_what_it_cannot_fuse(options):
    with pytest.raises(OptionError) as info:
        NonLocalOptions(in_channels=8, **options)
    assert info.value.key == "attention_impl"


def test_chunk_plan_is_bounded():
    from crossattn.attention_chunks import SCORE_BUDGET, attention_chunks

    for batch, queries, keys in [(1, 16384, 16384), (32, 4096, 1024), (2, 10, 10), (4096, 5000, 5000),
                                 (1, 100, 10 ** 6)]:
        q_chunk, k_chunk = attention_chunks(batch, queries, keys)
        assert 1 <= q_chunk <= queries and 1 <= k_chunk <= keys
        assert batch * q_chunk * k_chunk <= max(SCORE_BUDGET, batch)
    assert attention_chunks(1, 16384, 16384)[1] == 16384  # keys split only past the budget
    assert attention_chunks(1, 100, 10 ** 6)[1] == SCORE_BUDGET


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_fused_trains_on_inputs_without_gradient(framework):
    """Training images need no gradient: in gaussian mode queries and keys are then constants."""
    from crossattn.frameworks import adapter
    from weight_transfer import transfer

    spec_options = {"mode": "gaussian", "zero_init": False}
    weights = _weights(_spec("explicit", **spec_options))
    x = np.random.default_rng(4).standard_normal(SHAPES[2])
    grads = []
    for impl in ("explicit", "fused"):
        fw = adapter(framework)
        model = fw.to_dtype(registry.build(_spec(impl, **spec_options), framework), "float64")
        state = weights if framework == "torch" else transfer(weights, "torch", fw.slots(model), "paddle")[0]
        fw.load_state(model, state)
        if framework == "torch":
            import torch

            model(torch.tensor(x)).square().sum().backward()
            grads.append(model.g.weight.grad.numpy())
        else:
            import paddle

            model(paddle.to_tensor(x)).square().sum().backward()
            grads.append(model.g.weight.grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=FLOAT64.rtol, atol=FLOAT64.atol)
    assert np.abs(grads[0]).max() > 1e-6
