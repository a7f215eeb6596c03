"""Single-point bugs of the kind real ports contain, planted in one twin: each must be caught and located.

Every mutation edits one expression of a paddle twin (its source, recompiled
in place by monkeypatching) or one setting of a layer it builds. For each,
`check` must fail in float64 and in float32, and `diff` must name the layer
whose code holds the bug, accumulated and single-step.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import textwrap
from collections.abc import Callable

import numpy as np
import paddle
import pytest

from crossattn.check import check_spec
from crossattn.diff import diff_spec
from crossattn.spec import load_spec, resolve_spec


def patch_source(monkeypatch, owner, name: str, old: str, new: str) -> None:
    """Recompile owner.name (a function or method) with `old` replaced by `new`, exactly once."""
    func = inspect.unwrap(getattr(owner, name))
    source = textwrap.dedent(inspect.getsource(func))
    assert source.count(old) == 1, f"{old!r} occurs {source.count(old)} times in {func.__qualname__}"
    namespace = dict(sys.modules[func.__module__].__dict__)
    exec(compile(source.replace(old, new), f"<mutant of {func.__qualname__}>", "exec"), namespace)
    monkeypatch.setattr(owner, name, namespace[func.__name__])


def _edit(module: str, owner: str | None, name: str, old: str, new: str) -> Callable:
    def apply(monkeypatch) -> None:
        mod = __import__(module, fromlist=["_"])
        patch_source(monkeypatch, getattr(mod, owner) if owner else mod, name, old, new)
    return apply


def _bn_factory(module: str, adjust: Callable) -> Callable:
    """Wrap the paddle BatchNorm factory a twin module uses so every layer it builds is adjusted."""
    def apply(monkeypatch) -> None:
        import paddle_impl.layers as layers

        original = layers.batch_norm

        def built(dimension, channels):
            return adjust(original(dimension, channels))
        monkeypatch.setattr(f"{module}.batch_norm", built)
    return apply


def _momentum(layer):
    layer._momentum = 0.99
    return layer


def _unbiased(module: str) -> Callable:
    """paddle's BatchNorm, but folding the unbiased batch variance into its running variance (torch's rule)."""
    def apply(monkeypatch) -> None:
        import paddle_impl.layers as layers

        original = layers.batch_norm

        def built(dimension, channels):
            layer = original(dimension, channels)
            plain = layer.forward

            def forward(x):
                y = plain(x)
                if layer.training:
                    with paddle.no_grad():
                        n = x.size // x.shape[1]
                        biased = x.var(axis=[0, *range(2, x.ndim)], unbiased=False)
                        extra = (1 - layer._momentum) * biased * (n / (n - 1) - 1)
                        layer._variance.set_value(layer._variance + extra)
                return y
            layer.forward = forward  # keeps the layer's name, slots and kind
            return layer
        monkeypatch.setattr(f"{module}.batch_norm", built)
    return apply


@dataclasses.dataclass(frozen=True)
class Mutation:
    id: str
    kind: str  # axis | divisor | epsilon | momentum | rounding | activation | layout | padding | bias | order | scale
    spec: str
    apply: Callable
    #: where diff must locate it ("" is the block itself: code between its layers); a class used twice
    #: is found at its first use going forward and at its last going backward
    layer: str | tuple[str, ...]
    mode: str = "eval"  # the mode diff runs in
    probe: str = "normal"  # the input that reaches the bug
    buffers: bool = False  # a running-statistics bug: diff names it among the buffers ...
    buffer: str = "running_mean"  # ... this one of the layer's among them

    @property
    def layers(self) -> tuple[str, ...]:
        return self.layer if isinstance(self.layer, tuple) else (self.layer,)


NL, SE = "paddle_impl.blocks.non_local", "paddle_impl.blocks.se"
MUTATIONS = [
    Mutation("softmax_axis", "axis", "non_local_embedded_gaussian",
             _edit(NL, "NonLocalBlock", "_affinity", "softmax(f, axis=-1)", "softmax(f, axis=1)"), ""),
    Mutation("gc_softmax_axis", "axis", "global_context_add",
             _edit("paddle_impl.blocks.global_context", "GlobalContextBlock", "_context",
                   "reshape([batch, 1, -1]), axis=-1)", "reshape([batch, 1, -1]), axis=1)"), ""),
    Mutation("sk_softmax_axis", "axis", "selective_kernel_2_paths",
             _edit("paddle_impl.blocks.selective_kernel", "SelectiveKernelConv", "forward",
                   "softmax(scores, axis=1)", "softmax(scores, axis=2)"), ""),
    Mutation("dot_product_divisor", "divisor", "non_local_dot_product",
             _edit(NL, "NonLocalBlock", "_affinity",
                   'if opts.mode == "dot_product":\n        return f / pairwise_divisor(opts, shape, phi_x.shape[2])',
                   'if opts.mode == "dot_product":\n        return f / shape[2]'), ""),
    Mutation("gc_mean_divisor", "divisor", "global_context_avg",
             _edit("paddle_impl.blocks.global_context", "GlobalContextBlock", "_context",
                   "x.mean(axis=[2, 3], keepdim=True)", "x.sum(axis=[2, 3], keepdim=True) / x.shape[2]"), ""),
    Mutation("gct_epsilon", "epsilon", "gct_l2",
             _edit("paddle_impl.blocks.gct", "GCTBlock", "forward",
                   "(embedding * embedding).mean(axis=1, keepdim=True) + opts.epsilon)",
                   "(embedding * embedding).mean(axis=1, keepdim=True) + 1e-6)"), ""),
    Mutation("bn_momentum", "momentum", "non_local_embedded_gaussian", _bn_factory(NL, _momentum), "W.1",
             mode="train", buffers=True, buffer="momentum"),
    Mutation("bn_unbiased_variance", "momentum", "non_local_embedded_gaussian", _unbiased(NL), "W.1",
             mode="train", buffers=True),
    Mutation("deform_round", "rounding", "deform_conv_v2",
             _edit("paddle_impl.blocks.deform_conv", None, "_sample_columns",
                   "low_y, low_x = paddle.floor(pos_y).detach(), paddle.floor(pos_x).detach()",
                   "low_y, low_x = paddle.round(pos_y).detach(), paddle.floor(pos_x).detach()"), "conv"),
    Mutation("se_relu6", "activation", "se_default",
             _edit(SE, "SEBlock", "forward", "F.relu(self.fc1(squeezed))", "F.relu6(self.fc1(squeezed))"), "",
             probe="negative"),
    Mutation("hard_sigmoid_slope", "activation", "se_hard_sigmoid",
             _edit(SE, None, "apply_gate", "F.relu6(x + 3.0) / 6.0", "paddle.clip(0.2 * x + 0.5, 0.0, 1.0)"), ""),
    Mutation("gct_l1_abs", "activation", "gct_l1",
             _edit("paddle_impl.blocks.gct", "GCTBlock", "forward", "x if opts.after_relu else paddle.abs(x)",
                   "x if opts.after_relu else paddle.nn.functional.relu(x)"), ""),
    Mutation("reshape_for_transpose", "layout", "non_local_embedded_gaussian",
             _edit(NL, "NonLocalBlock", "_relate_positions", "reshape([batch, opts.inter, -1]).transpose([0, 2, 1])",
                   "reshape([batch, -1, opts.inter])"), ""),
    Mutation("deform_offset_order", "layout", "deform_conv_v1",
             _edit("paddle_impl.blocks.deform_conv", None, "_sample_columns",
                   "offset[:, :, :, 0]  # (B, G, K, out_h, out_w)", "offset[:, :, :, 1]"), "conv"),
    Mutation("pool_pad_side", "padding", "res2net_stage_v1b",
             _edit("paddle_impl.blocks.res2net", "AvgPool", "forward", "[left, right, top, bottom]",
                   "[right, left, bottom, top]"), "downsample.0"),
    Mutation("se_bias_twice", "bias", "se_default",
             _edit(SE, "SEBlock", "forward", "F.relu(self.fc1(squeezed))",
                   "F.relu(self.fc1(squeezed) + self.fc1.bias)"), ""),
    Mutation("mixed_concat_order", "order", "mixed_pooling_coarse_bins",
             _edit("paddle_impl.blocks.strip_pooling", "MixedPoolingBlock", "forward", "[square, strip]",
                   "[strip, square]"), ""),
    Mutation("cbam_pool_order", "order", "cbam_default",
             _edit("paddle_impl.blocks.cbam", "SpatialGate", "forward",
                   "[x.mean(axis=1, keepdim=True), paddle.amax(x, axis=1, keepdim=True)]",
                   "[paddle.amax(x, axis=1, keepdim=True), x.mean(axis=1, keepdim=True)]"), "spatial_gate"),
    Mutation("attention_scale", "scale", "non_local_embedded_gaussian_scaled",
             _edit(NL, "NonLocalBlock", "_affinity", "f = f * opts.scale", "f = f * opts.scale ** 2"), ""),
    Mutation("align_corners", "rounding", "mixed_pooling_align_corners_false",
             _edit("paddle_impl.blocks.strip_pooling", "MixedPoolingBlock", "forward",
                   "bilinear_resize(pooled, height, width, opts.align_corners)",
                   "bilinear_resize(pooled, height, width, not opts.align_corners)"), ""),
    Mutation("nested_softmax_axis", "axis", "mnist_non_local",
             _edit(NL, "NonLocalBlock", "_affinity", "softmax(f, axis=-1)", "softmax(f, axis=1)"), ("convs.4", "convs.9")),
]


def test_the_suite_covers_every_kind_of_bug():
    assert len(MUTATIONS) >= 15 and len({m.id for m in MUTATIONS}) == len(MUTATIONS)
    assert {"axis", "divisor", "epsilon", "momentum", "rounding", "activation", "layout", "padding", "bias",
            "order"} <= {m.kind for m in MUTATIONS}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.id for m in MUTATIONS])
def test_check_catches_the_mutation(monkeypatch, mutation, dtype):
    spec = load_spec(resolve_spec(mutation.spec))
    assert all(c.passed for c in check_spec(spec, dtype=dtype, directions=("torch->paddle",),
                                            modes=(mutation.mode,), probes=() if mutation.probe == "normal"
                                            else (mutation.probe,))), "the twins themselves must pass"
    mutation.apply(monkeypatch)
    directions = ("torch->paddle", "paddle->torch") if mutation.buffers else ("torch->paddle",)
    cases = check_spec(spec, dtype=dtype, directions=directions)
    for direction in directions:  # caught whichever framework holds the reference
        assert any(not c.passed for c in cases if c.direction == direction), (direction, dtype)


@pytest.mark.parametrize("single_step", [False, True], ids=["accumulated", "single-step"])
@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.id for m in MUTATIONS])
def test_diff_locates_the_mutation(monkeypatch, mutation, single_step):
    mutation.apply(monkeypatch)
    spec = load_spec(resolve_spec(mutation.spec))
    report = diff_spec(spec, "torch->paddle", mutation.mode, single_step, probe=mutation.probe)
    assert not report.passed
    if mutation.buffers:
        failed = {c.tensor for c in report.buffers if not c.passed}
        assert failed and all(t.startswith(mutation.layers[0] + ".") for t in failed), failed
        return
    # the end-to-end comparison is part of every report, single-step included
    assert [c.tensor for c in report.end_to_end] == ["output (end to end)", "input.grad (end to end)"]
    assert not report.end_to_end[0].passed
    blamed = [s.layer for s in (report.forward, report.backward) if s is not None]
    assert blamed and blamed[0] == mutation.layers[0], (report.forward, report.backward)
    assert all(b in mutation.layers for b in blamed), (report.forward, report.backward)


FLOAT32_DIFF = [m for m in MUTATIONS if m.id in ("gct_epsilon", "softmax_axis", "cbam_pool_order", "bn_momentum")]


@pytest.mark.parametrize("single_step", [False, True], ids=["accumulated", "single-step"])
@pytest.mark.parametrize("mutation", FLOAT32_DIFF, ids=[m.id for m in FLOAT32_DIFF])
def test_float32_diff_locates_it_too(monkeypatch, mutation, single_step):
    """A float32 diff judges every layer by the float32 rule: a bug below float32 rounding is still located."""
    spec = load_spec(resolve_spec(mutation.spec))
    assert diff_spec(spec, "torch->paddle", mutation.mode, single_step, dtype="float32",
                     probe=mutation.probe).passed, "the twins themselves must pass"
    mutation.apply(monkeypatch)
    report = diff_spec(spec, "torch->paddle", mutation.mode, single_step, dtype="float32", probe=mutation.probe)
    assert not report.passed
    if mutation.buffers:
        assert {c.tensor for c in report.buffers if not c.passed} >= {f"{mutation.layers[0]}.{mutation.buffer}"}
    else:
        assert report.forward is not None and report.forward.layer == mutation.layers[0]
