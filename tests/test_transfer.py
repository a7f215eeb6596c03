"""Weight transfer by rules: every tensor accounted for, in both directions."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.errors import TransferError
from crossattn.init import BN_WEIGHT_RANGE, initial_state
from paddle_impl import adapter as paddle_adapter
from paddle_impl.layers import batch_norm as paddle_bn, layer_norm as paddle_ln
from torch_impl import adapter as torch_adapter
from torch_impl.layers import batch_norm as torch_bn, layer_norm as torch_ln
from weight_transfer import transfer


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6)
        self.fc = torch.nn.Linear(6, 4)
        self.bn = torch_bn(1, 4)
        self.norm = torch_ln([4, 1, 1])
        self.conv = torch.nn.Conv2d(4, 3, 3)
        self.act = torch.nn.PReLU(3)
        self.inorm = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True)


class PaddleNet(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.embed = paddle.nn.Embedding(10, 6)
        self.fc = paddle.nn.Linear(6, 4)
        self.bn = paddle_bn(1, 4)
        self.norm = paddle_ln([4, 1, 1])
        self.conv = paddle.nn.Conv2D(4, 3, 3)
        self.act = paddle.nn.PReLU(3)
        self.inorm = paddle.nn.InstanceNorm2D(3)


@pytest.fixture()
def nets():
    return TorchNet(), PaddleNet()


def test_rules_apply_by_layer_kind(nets):
    tnet, pnet = nets
    tstate = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=1, mode="check")
    pstate, report = transfer(tstate, "torch", paddle_adapter.slots(pnet), "paddle")
    np.testing.assert_array_equal(pstate["fc.weight"], tstate["fc.weight"].T)
    np.testing.assert_array_equal(pstate["embed.weight"], tstate["embed.weight"])  # never transposed
    np.testing.assert_array_equal(pstate["bn._mean"], tstate["bn.running_mean"])
    np.testing.assert_array_equal(pstate["bn._variance"], tstate["bn.running_var"])
    assert pstate["norm.weight"].shape == (4,) and tstate["norm.weight"].shape == (4, 1, 1)
    np.testing.assert_array_equal(pstate["conv.weight"], tstate["conv.weight"])
    assert "bn.num_batches_tracked" in report.dropped
    np.testing.assert_array_equal(pstate["act._weight"], tstate["act.weight"])
    np.testing.assert_array_equal(pstate["inorm.scale"], tstate["inorm.weight"])
    assert {"inorm.running_mean", "inorm.running_var"} <= set(report.dropped)  # paddle keeps none: recorded
    assert report.transposed == ["fc.weight"]
    assert set(report.reshaped) == {"norm.weight", "norm.bias"}
    paddle_adapter.load_state(pnet, pstate)


def test_round_trip_is_exact(nets):
    """Every tensor with a twin comes back bit-identical; one without comes back as its rule's fill value."""
    tnet, pnet = nets
    tstate = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=2, mode="check")
    tstate["bn.num_batches_tracked"] = np.array(0, dtype=np.int64)
    pstate, there = transfer(tstate, "torch", paddle_adapter.slots(pnet), "paddle")
    back, report = transfer(pstate, "paddle", torch_adapter.slots(tnet), "torch")
    assert set(back) == set(tstate)
    for key in tstate:
        if key in there.dropped:
            continue
        np.testing.assert_array_equal(back[key], tstate[key])
    assert "bn.num_batches_tracked" in report.filled
    for key, value in there.dropped.items():  # a view would keep a memory-mapped checkpoint resident
        np.testing.assert_array_equal(value, tstate[key])
        assert not np.shares_memory(value, tstate[key])
    np.testing.assert_array_equal(back["inorm.running_mean"], 0)
    np.testing.assert_array_equal(back["inorm.running_var"], 1)  # a variance starts at one, not zero


def test_missing_unexpected_and_misshaped_keys_are_all_named(nets):
    tnet, pnet = nets
    tstate = torch_adapter.state(tnet)
    del tstate["conv.bias"]
    tstate["extra.weight"] = np.zeros(3, np.float32)
    tstate["fc.bias"] = np.zeros(7, np.float32)
    with pytest.raises(TransferError) as info:
        transfer(tstate, "torch", paddle_adapter.slots(pnet), "paddle")
    message = str(info.value)
    assert "missing `conv.bias`" in message
    assert "unexpected `extra.weight`" in message
    assert "mis-shaped `fc.bias`" in message and "[7]" in message and "[4]" in message
    assert len(info.value.problems) == 3


def test_same_seed_gives_same_initial_weights_in_both_frameworks(nets):
    tnet, pnet = nets
    for mode in ("default", "check"):
        tstate = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=7, mode=mode)
        pstate = initial_state(paddle_adapter.slots(pnet), paddle_adapter.state(pnet), "paddle", seed=7, mode=mode)
        mapped, _ = transfer(tstate, "torch", paddle_adapter.slots(pnet), "paddle")
        for key in pstate:
            np.testing.assert_array_equal(mapped[key], pstate[key], err_msg=f"{mode} {key}")


def test_default_init_follows_torch_distributions_and_zero_init():
    from torch_impl.blocks.non_local import NonLocalBlock

    block = NonLocalBlock(in_channels=64)
    state = initial_state(torch_adapter.slots(block), torch_adapter.state(block), "torch", seed=0)
    bound = 1 / np.sqrt(64)
    assert np.abs(state["theta.weight"]).max() <= bound and np.abs(state["theta.weight"]).max() > 0.9 * bound
    assert not state["W.1.weight"].any() and not state["W.1.bias"].any()  # identity start kept
    np.testing.assert_array_equal(state["W.1.running_var"], 1)


def test_different_seeds_differ(nets):
    tnet, _ = nets
    a = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=1)
    b = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=2)
    assert not np.array_equal(a["fc.weight"], b["fc.weight"])


def test_default_init_starts_norm_scales_at_one_in_both_frameworks(nets):
    """paddle names InstanceNorm's weight `scale`: init goes by the torch-side name, so it starts at one."""
    _, pnet = nets
    state = initial_state(paddle_adapter.slots(pnet), paddle_adapter.state(pnet), "paddle", seed=0)
    np.testing.assert_array_equal(state["inorm.scale"], 1)
    np.testing.assert_array_equal(state["act._weight"], 0.25)  # PReLU keeps its constant start


def test_check_draws_follow_the_slot_dtype_within_the_same_bounds(nets):
    """float32 tensors are drawn in float32 (half the time and memory); float64 ones keep float64 draws."""
    tnet, _ = nets
    single = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=3, mode="check")
    tnet.double()
    double = initial_state(torch_adapter.slots(tnet), torch_adapter.state(tnet), "torch", seed=3, mode="check")
    bound = 1 / np.sqrt(6)
    for state, dtype in ((single, np.float32), (double, np.float64)):
        assert state["fc.weight"].dtype == dtype
        assert np.abs(state["fc.weight"]).max() <= bound and np.abs(state["fc.weight"]).max() > 0.5 * bound
        low, high = BN_WEIGHT_RANGE
        assert low <= state["bn.weight"].min() and state["bn.weight"].max() < high
        ratio = state["bn.running_var"] / np.square(state["bn.weight"].astype(np.float64))
        assert 0.5 - 1e-6 <= ratio.min() and ratio.max() < 1.5 + 1e-6  # eval-mode gain within [0.8, 1.4]
    # float64 draws carry more than float32 holds
    assert not np.array_equal(double["fc.weight"].astype(np.float32).astype(np.float64), double["fc.weight"])
    assert single["fc.weight"].std() > 0 and double["fc.weight"].std() > 0


def test_torch_norm_epsilons_take_the_float32_value_paddle_applies():
    from torch_impl.layers import epsilons_as_paddle_holds

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.InstanceNorm2d(3, eps=1e-6), torch.nn.LayerNorm([3]),
                                torch.nn.GroupNorm(1, 3), torch.nn.BatchNorm1d(3, eps=float(np.float32(1e-3))))
    changed = epsilons_as_paddle_holds(model)
    assert [name for name, _, _ in changed] == ["0", "1", "2"]  # GroupNorm: paddle keeps float64; 4: already float32
    assert model[0].eps == float(np.float32(1e-5)) and model[1].eps == float(np.float32(1e-6))
    assert model[3].eps == 1e-5
    assert epsilons_as_paddle_holds(model) == []
