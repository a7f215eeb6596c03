"""What check reuses instead of recomputing: blocked sums, the second direction's sums, loaded states."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossattn import pair_sums
from crossattn.check import BuiltTwins, LoadedStates, as_pair, check_spec
from crossattn.compare import compare, judge
from crossattn.frameworks import adapter
from crossattn.pair_sums import SumsMemo, judged_sums
from crossattn.spec import load_spec, resolve_spec
from crossattn.tolerances import FLOAT32, FLOAT64


def _direct(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float, float]:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = a - b
    return float(d @ d), float(np.abs(d).max()), float(a @ a), float(b @ b), float(a @ b)


@pytest.mark.parametrize("size", [1, 7, pair_sums.BLOCK, 3 * pair_sums.BLOCK + 5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_sums_equal_the_direct_ones(size, dtype):
    rng = np.random.default_rng(size)
    a = rng.standard_normal((size,)).astype(dtype)
    b = (a + 1e-3 * rng.standard_normal(size)).astype(dtype)
    got = pair_sums.pair_sums(a.reshape(-1, 1), b.reshape(-1, 1))
    for value, expected in zip((got.diff_sq, got.max_abs, got.a_sq, got.b_sq, got.dot), _direct(a, b)):
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_judged_sums_equal_the_direct_ones():
    rng = np.random.default_rng(3)
    size = 2 * pair_sums.BLOCK + 11
    a64, b64 = rng.standard_normal(size), rng.standard_normal(size)
    a, b = a64.astype(np.float32), (b64 + 1e-4).astype(np.float32)
    got = judged_sums(a, b, a64, b64)
    assert got.single.diff_sq == pytest.approx(_direct(a, b)[0], rel=1e-12)
    assert got.single.max_abs == pytest.approx(_direct(a, b)[1], rel=1e-12)
    assert got.double.diff_sq == pytest.approx(_direct(a64, b64)[0], rel=1e-12)
    assert got.double.b_sq == pytest.approx(float(b64 @ b64), rel=1e-12)
    assert got.reference_rounding == pytest.approx(np.linalg.norm(b.astype(np.float64) - b64), rel=1e-12)
    assert got.candidate_rounding == pytest.approx(np.linalg.norm(a.astype(np.float64) - a64), rel=1e-12)


def test_a_nan_anywhere_in_a_block_is_seen():
    a = np.zeros(3 * pair_sums.BLOCK)
    b = a.copy()
    b[pair_sums.BLOCK + 1] = np.nan
    assert math.isnan(pair_sums.pair_sums(a, b).max_abs)
    assert not compare("x", "output", a, b, FLOAT64).passed


@pytest.mark.parametrize("truthful", [False, True])
def test_the_memo_gives_the_swapped_comparison_its_direct_verdict(truthful):
    rng = np.random.default_rng(5)
    a64 = rng.standard_normal((40, 30))
    b64 = a64 * (1 + 3e-9) + 1e-9
    a, b = a64.astype(np.float32), b64.astype(np.float32)
    memo = SumsMemo()
    if truthful:
        first = judge("w", "param_grad", b, a, b64, a64, FLOAT32, memo=memo)
        swapped = judge("w", "param_grad", a, b, a64, b64, FLOAT32, memo=memo)
        direct = judge("w", "param_grad", a, b, a64, b64, FLOAT32)
    else:
        first = compare("w", "param_grad", a64, b64, FLOAT64, memo=memo)
        swapped = compare("w", "param_grad", b64, a64, FLOAT64, memo=memo)
        direct = compare("w", "param_grad", b64, a64, FLOAT64)
    assert not memo.entries  # the second comparison used the first's sums
    assert first.passed == direct.passed
    for field in ("max_abs", "norm_rel", "cosine", "score", "passed", "note"):
        got, expected = getattr(swapped, field), getattr(direct, field)
        assert got == (pytest.approx(expected, rel=1e-12) if isinstance(expected, float) else expected), field


def _bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).double()


def test_a_model_holds_its_state_through_eval_steps_and_not_through_train_steps():
    fw = adapter("torch")
    model = _bn_model()
    state = fw.state(model)
    loads = LoadedStates()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    cotangent = lambda shape: np.ones(shape)  # noqa: E731
    loads.step(fw, model, state, x, cotangent, train=False)
    assert loads.holds(model, state)
    loads.step(fw, model, state, x, cotangent, train=False)
    assert loads.holds(model, state)
    loads.step(fw, model, state, x, cotangent, train=True)  # the running statistics move
    assert not loads.holds(model, state)
    assert not loads.holds(model, dict(state))  # an equal state is not the state loaded


@pytest.mark.parametrize("spec_name", ["se_conv", "non_local_embedded_gaussian"])
def test_check_loads_each_model_once_and_still_judges_every_case(monkeypatch, spec_name):
    loaded = {"torch": 0, "paddle": 0}
    for framework in loaded:
        module = adapter(framework)
        for name in ("load_state", "load_lazy"):  # a model built without storage takes its first state lazily
            original = getattr(module, name)

            def counting(model, values, *args, framework=framework, original=original, **kwargs):
                loaded[framework] += 1
                return original(model, values, *args, **kwargs)

            monkeypatch.setattr(module, name, counting)
    cases = check_spec(load_spec(resolve_spec(spec_name)))
    assert len(cases) == 5 and all(c.passed for c in cases)
    # eval steps (normal and the large probe) and then the train step, from one load per framework
    assert loaded == {"torch": 1, "paddle": 1}


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_a_model_built_without_storage_takes_its_first_state_and_never_writes_a_state_back(framework):
    fw = adapter(framework)
    pair = as_pair(load_spec(resolve_spec("se_conv")))
    built = BuiltTwins(pair, "float64")
    model, slots, _ = built.get(framework)
    assert built.loads.without_storage.get(id(model)) is model  # nothing zeroed or copied yet
    rng = np.random.default_rng(0)
    first = {k: rng.standard_normal(s.shape) for k, s in slots.items()}
    kept = {k: v.copy() for k, v in first.items()}
    built.loads.load(fw, model, first)
    assert not built.loads.without_storage
    second = {k: v + 1.0 for k, v in first.items()}
    built.loads.load(fw, model, second)  # into the model's storage, not into the arrays of `first`
    assert all(np.array_equal(first[k], kept[k]) for k in kept)
    assert all(np.array_equal(v, second[k]) for k, v in fw.state(model).items())


def test_a_private_cast_becomes_the_torch_models_storage():
    fw = adapter("torch")
    built = BuiltTwins(as_pair(load_spec(resolve_spec("se_conv"))), "float64")
    model, slots, _ = built.get("torch")
    state = {k: np.random.default_rng(1).standard_normal(s.shape) for k, s in slots.items()}
    built.loads.load(fw, model, dict(state), private=True)
    name, parameter = next(iter(model.named_parameters()))
    assert parameter.detach().numpy().ctypes.data == state[name].ctypes.data  # shared, not copied
