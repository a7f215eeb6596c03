"""Layer kinds beyond the zoo: each transfers by its rule and the two layers then compute the same thing.

Each case builds one torch module and its paddle counterpart, draws random
weights in one framework (check mode: every tensor random), transfers them, and
compares output, input gradient and every parameter gradient in float64, in
both directions; the transfer back must give the source state exactly.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch
from paddle import nn as pn
from torch import nn as tn

from crossattn.compare import compare
from crossattn.errors import TransferError
from crossattn.init import initial_state
from crossattn.tolerances import tolerance_for
from paddle_impl import adapter as paddle_adapter
from torch_impl import adapter as torch_adapter
from weight_transfer import transfer

ADAPTERS = {"torch": torch_adapter, "paddle": paddle_adapter}


class TorchAttention(tn.Module):
    """Self-attention over tokens (batch first); keys and values cut to kdim/vdim features."""

    def __init__(self, embed: int = 8, heads: int = 2, kdim: int | None = None, vdim: int | None = None) -> None:
        super().__init__()
        self.kdim, self.vdim = kdim or embed, vdim or embed
        self.attn = tn.MultiheadAttention(embed, heads, batch_first=True, kdim=kdim, vdim=vdim)

    def forward(self, x):
        return self.attn(x, x[..., :self.kdim], x[..., :self.vdim], need_weights=False)[0]


class PaddleAttention(pn.Layer):
    def __init__(self, embed: int = 8, heads: int = 2, kdim: int | None = None, vdim: int | None = None) -> None:
        super().__init__()
        self.kdim, self.vdim = kdim or embed, vdim or embed
        self.attn = pn.MultiHeadAttention(embed, heads, kdim=kdim, vdim=vdim)

    def forward(self, x):
        return self.attn(x, x[..., :self.kdim], x[..., :self.vdim])


class TorchEmbed(tn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = tn.Embedding(10, 6)

    def forward(self, x):  # float input: token ids from its sign pattern, the float kept in the graph
        ids = (x[:, :, 0] > 0).long() * 3 + (x[:, :, 1] > 0).long()
        return self.embed(ids) * x[:, :, 2:3]


class PaddleEmbed(pn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.embed = pn.Embedding(10, 6)

    def forward(self, x):
        ids = (x[:, :, 0] > 0).astype("int64") * 3 + (x[:, :, 1] > 0).astype("int64")
        return self.embed(ids) * x[:, :, 2:3]


CASES = {
    "embedding": (TorchEmbed, PaddleEmbed, (2, 5, 4)),
    "groupnorm": (lambda: tn.GroupNorm(2, 6), lambda: pn.GroupNorm(2, 6), (2, 6, 4, 4)),
    "groupnorm-depthwise-groups": (lambda: tn.GroupNorm(6, 6), lambda: pn.GroupNorm(6, 6), (2, 6, 3, 3)),
    "layernorm-2d-shape": (lambda: tn.LayerNorm([4, 5]), lambda: pn.LayerNorm([4, 5]), (2, 3, 4, 5)),
    "layernorm-3d-shape": (lambda: tn.LayerNorm([3, 4, 5]), lambda: pn.LayerNorm([3, 4, 5]), (2, 3, 4, 5)),
    "prelu-per-channel": (lambda: tn.PReLU(3), lambda: pn.PReLU(3), (2, 3, 4, 4)),
    "prelu-single": (lambda: tn.PReLU(), lambda: pn.PReLU(), (2, 3, 4, 4)),
    "conv-depthwise": (lambda: tn.Conv2d(4, 8, 3, groups=4, padding=1),
                       lambda: pn.Conv2D(4, 8, 3, groups=4, padding=1), (2, 4, 5, 5)),
    "conv-grouped": (lambda: tn.Conv2d(6, 4, 3, groups=2, stride=2),
                     lambda: pn.Conv2D(6, 4, 3, groups=2, stride=2), (2, 6, 7, 7)),
    "conv1d": (lambda: tn.Conv1d(4, 6, 3, dilation=2), lambda: pn.Conv1D(4, 6, 3, dilation=2), (2, 4, 9)),
    "conv3d": (lambda: tn.Conv3d(2, 3, 3, padding=1), lambda: pn.Conv3D(2, 3, 3, padding=1), (2, 2, 4, 4, 4)),
    "conv-transpose": (lambda: tn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
                       lambda: pn.Conv2DTranspose(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 5, 5)),
    "conv-transpose-grouped": (lambda: tn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dilation=2),
                               lambda: pn.Conv2DTranspose(4, 6, 3, stride=2, groups=2, dilation=2), (2, 4, 5, 5)),
    "conv-transpose-1d": (lambda: tn.ConvTranspose1d(4, 2, 4, stride=2),
                          lambda: pn.Conv1DTranspose(4, 2, 4, stride=2), (2, 4, 6)),
    "conv-transpose-3d": (lambda: tn.ConvTranspose3d(2, 4, 2, stride=2, groups=2),
                          lambda: pn.Conv3DTranspose(2, 4, 2, stride=2, groups=2), (1, 2, 3, 3, 3)),
    "batchnorm1d": (lambda: tn.BatchNorm1d(4), lambda: pn.BatchNorm1D(4), (3, 4, 5)),
    "batchnorm3d": (lambda: tn.BatchNorm3d(3), lambda: pn.BatchNorm3D(3), (2, 3, 2, 3, 3)),
    "instancenorm1d": (lambda: tn.InstanceNorm1d(4, affine=True), lambda: pn.InstanceNorm1D(4), (2, 4, 6)),
    "multihead-attention": (TorchAttention, PaddleAttention, (2, 5, 8)),
    "multihead-attention-kdim-vdim": (lambda: TorchAttention(8, 2, 6, 4), lambda: PaddleAttention(8, 2, 6, 4),
                                      (2, 5, 8)),
    # no Hardsigmoid: paddle's slope is 0.1666667, not 1/6 (1e-7 apart at |x| = 3, visible in float64)
    "stateless": (lambda: tn.Sequential(tn.Identity(), tn.ReLU6(), tn.Hardswish(), tn.SiLU(), tn.GELU()),
                  lambda: pn.Sequential(pn.Identity(), pn.ReLU6(), pn.Hardswish(), pn.Silu(), pn.GELU()),
                  (2, 3, 4)),
}


def _built(factory, framework: str):
    paddle.seed(0)
    torch.manual_seed(0)
    return ADAPTERS[framework].to_dtype(factory(), "float64")


def _check(torch_factory, paddle_factory, shape, source: str) -> None:
    factories = {"torch": torch_factory, "paddle": paddle_factory}
    target = "paddle" if source == "torch" else "torch"
    src, dst = ADAPTERS[source], ADAPTERS[target]
    src_model, dst_model = _built(factories[source], source), _built(factories[target], target)
    src_slots, dst_slots = src.slots(src_model), dst.slots(dst_model)
    init = initial_state(src_slots, src.state(src_model), source, seed=3, mode="check")
    moved, _ = transfer(init, source, dst_slots, target)
    back, _ = transfer(moved, target, src_slots, source)
    for key, value in init.items():  # the round trip gives the source state exactly
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value, err_msg=key)
    x = np.random.default_rng(1).standard_normal(shape)

    def cotangent(out_shape):
        return np.random.default_rng(2).standard_normal(out_shape)

    tol = tolerance_for("float64")
    for train in (True, False):
        src.load_state(src_model, init)  # afresh: a train step moves running statistics, by each own rule
        dst.load_state(dst_model, moved)
        ref = src.step(src_model, x, cotangent, train)
        got = dst.step(dst_model, x, cotangent, train)
        results = [compare("output", "output", got.output, ref.output, tol),
                   compare("input.grad", "input_grad", got.input_grad, ref.input_grad, tol)]
        grads, _ = transfer(got.param_grads, target, src_slots, source, complete=False)
        assert set(grads) == set(ref.param_grads)
        scale = max((float(np.linalg.norm(v)) for v in ref.param_grads.values()), default=0.0)  # zero-exact: family
        results += [compare(k, "param_grad", grads[k], v, tol, scale=scale) for k, v in ref.param_grads.items()]
        failed = [r for r in results if not r.passed]
        assert not failed, failed


@pytest.mark.parametrize("source", ["torch", "paddle"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_kind_transfers_and_computes_the_same(case, source):
    _check(*CASES[case], source)


def test_a_wrong_transposed_conv_layout_is_caught():
    """The check above can fail: a ConvTranspose weight given with in/out swapped computes differently."""
    tmod = _built(lambda: tn.ConvTranspose2d(4, 4, 3, stride=2), "torch")
    pmod = _built(lambda: pn.Conv2DTranspose(4, 4, 3, stride=2), "paddle")
    state = initial_state(torch_adapter.slots(tmod), torch_adapter.state(tmod), "torch", seed=3, mode="check")
    torch_adapter.load_state(tmod, state)
    moved, _ = transfer(state, "torch", paddle_adapter.slots(pmod), "paddle")
    moved["weight"] = np.ascontiguousarray(moved["weight"].transpose(1, 0, 2, 3))
    paddle_adapter.load_state(pmod, moved)
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 4))
    ones = np.ones
    a = torch_adapter.step(tmod, x, ones, False).output
    b = paddle_adapter.step(pmod, x, ones, False).output
    assert not compare("output", "output", b, a, tolerance_for("float64")).passed


def test_multihead_attention_fused_projection_is_split_in_order():
    tmod = _built(TorchAttention, "torch")
    pmod = _built(PaddleAttention, "paddle")
    state = initial_state(torch_adapter.slots(tmod), torch_adapter.state(tmod), "torch", seed=0, mode="check")
    moved, report = transfer(state, "torch", paddle_adapter.slots(pmod), "paddle")
    q, k, v = np.split(state["attn.in_proj_weight"], 3)
    np.testing.assert_array_equal(moved["attn.q_proj.weight"], q.T)
    np.testing.assert_array_equal(moved["attn.k_proj.weight"], k.T)
    np.testing.assert_array_equal(moved["attn.v_proj.weight"], v.T)
    np.testing.assert_array_equal(moved["attn.v_proj.bias"], np.split(state["attn.in_proj_bias"], 3)[2])
    assert ("attn.in_proj_weight", "attn.q_proj.weight") in report.renamed
    assert paddle_adapter.slots(pmod)["attn.q_proj.weight"].kind == "mha"


def test_torch_attention_bias_kv_has_no_paddle_twin_and_is_named():
    tmod = _built(lambda: tn.MultiheadAttention(8, 2, add_bias_kv=True), "torch")
    pmod = _built(lambda: pn.MultiHeadAttention(8, 2), "paddle")
    with pytest.raises(TransferError, match="bias_k"):
        transfer(torch_adapter.state(tmod), "torch", paddle_adapter.slots(pmod), "paddle")


def test_sync_batchnorm_transfers_as_batchnorm():
    """SyncBatchNorm is BatchNorm across devices; on one device it computes BatchNorm.

    paddle registers no CPU kernel for sync_batch_norm, so the paddle side of the
    numbers is paddle's BatchNorm2D loaded with the state made for SyncBatchNorm.
    """
    tsync = _built(lambda: tn.SyncBatchNorm(4), "torch")
    psync = _built(lambda: pn.SyncBatchNorm(4), "paddle")
    assert torch_adapter.layer_kind(tsync) == paddle_adapter.layer_kind(psync) == "batchnorm"
    state = initial_state(torch_adapter.slots(tsync), torch_adapter.state(tsync), "torch", seed=0, mode="check")
    moved, report = transfer(state, "torch", paddle_adapter.slots(psync), "paddle")
    assert set(moved) == {"weight", "bias", "_mean", "_variance"} and "num_batches_tracked" in report.dropped
    paddle_adapter.load_state(psync, moved)
    plain = _built(lambda: pn.BatchNorm2D(4), "paddle")
    paddle_adapter.load_state(plain, moved)
    torch_adapter.load_state(tsync, state)
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 3))
    a = torch_adapter.step(tsync, x, np.ones, False).output
    b = paddle_adapter.step(plain, x, np.ones, False).output
    assert compare("output", "output", b, a, tolerance_for("float64")).passed


def test_attention_layers_are_paired_by_their_split_shapes():
    """A name map proposed across the fused/split forms: torch's in_proj_weight matches paddle's q/k/v."""
    from crossattn.name_mapping import propose_name_map

    tmod = tn.Sequential(TorchAttention())
    pmod = PaddleAttention()
    proposal = propose_name_map(torch_adapter.slots(tmod), paddle_adapter.slots(pmod))
    assert proposal.mapping == {"0": ""}


class PaddleAttentionSwapped(PaddleAttention):
    """A planted bug: keys and values given in the wrong order (as a wrong q/k/v split would do)."""

    def forward(self, x):
        return self.attn(x, x[..., :self.vdim] * 0.5, x[..., :self.kdim])


@pytest.mark.parametrize("paddle_factory, passed", [("PaddleAttention", True), ("PaddleAttentionSwapped", False)])
def test_check_of_an_attention_pair_counts_split_tensors_as_the_fused_one(paddle_factory, passed):
    from click.testing import CliRunner

    import cli

    here = "tests.test_layer_kinds"
    result = CliRunner().invoke(cli.cli, ["check", "--torch-model", f"{here}:TorchAttention", "--paddle-model",
                                          f"{here}:{paddle_factory}", "--input-shape", "2,5,8"],
                                standalone_mode=False)
    assert ("5 passed, 0 failed" in result.output) is passed, result.output  # 2 x 2 cases + the large probe
    assert "trainable in" not in result.output  # q/k/v parts are compared as in_proj_weight


def test_an_attention_checkpoint_converts_both_ways(tmp_path):
    from click.testing import CliRunner

    import cli

    here = "tests.test_layer_kinds"
    pair = ["--torch-model", f"{here}:TorchAttention", "--paddle-model", f"{here}:PaddleAttention",
            "--input-shape", "2,5,8"]
    model = TorchAttention()
    state = initial_state(torch_adapter.slots(model), torch_adapter.state(model), "torch", seed=5, mode="check")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "a.pt")
    for src, dst in (("a.pt", "a.pdparams"), ("a.pdparams", "b.pt")):
        result = CliRunner().invoke(cli.cli, ["convert", str(tmp_path / src), str(tmp_path / dst), *pair],
                                    standalone_mode=False)
        assert "verify    PASS" in result.output, result.output
    q = paddle.load(str(tmp_path / "a.pdparams"))["attn.q_proj.weight"]
    np.testing.assert_array_equal(q, np.split(state["attn.in_proj_weight"], 3)[0].T)
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key].numpy(), value)


def test_a_missing_fused_projection_is_named_by_its_torch_name():
    tmod = _built(lambda: tn.MultiheadAttention(8, 2, bias=False), "torch")
    pmod = _built(lambda: pn.MultiHeadAttention(8, 2), "paddle")  # paddle's has biases
    with pytest.raises(TransferError) as info:
        transfer(torch_adapter.state(tmod), "torch", paddle_adapter.slots(pmod), "paddle")
    assert "missing `in_proj_bias` (for paddle `q_proj.bias`" in str(info.value)
    pstate = paddle_adapter.state(pmod)
    del pstate["v_proj.weight"]
    with pytest.raises(TransferError) as info:
        transfer(pstate, "paddle", torch_adapter.slots(_built(lambda: tn.MultiheadAttention(8, 2), "torch")), "torch")
    assert "missing `v_proj.weight` (for torch `in_proj_weight`" in str(info.value)
