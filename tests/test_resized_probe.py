"""A user's pair is also checked one pixel larger per spatial axis, where size-dependent ports part."""

from __future__ import annotations

import pytest

from crossattn.check import check_spec, resized_shape
from crossattn.model_pair import ModelPair

FIXTURE = "tests.fixtures.size_pairs"


def cases_of(torch_factory: str, paddle_factory: str, shape: tuple[int, ...], dtype: str):
    pair = ModelPair.from_factories(f"{FIXTURE}:{torch_factory}", f"{FIXTURE}:{paddle_factory}", input_shape=shape)
    return {c.probe: c for c in check_spec(pair, dtype=dtype) if c.direction == "torch->paddle" and c.mode == "eval"}


def test_the_resized_shape_keeps_batch_and_channels():
    assert resized_shape((2, 3, 8, 9)) == (2, 3, 9, 10)
    assert resized_shape((2, 3, 4, 4, 4)) == (2, 3, 5, 5, 5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_ceil_mode_missing_on_one_side_fails_at_the_resized_input_only(dtype):
    """At 9x9 a 3x3 stride-2 pool gives 4x4 with or without ceil_mode; at 10x10 5x5 against 4x4."""
    cases = cases_of("torch_pooled", "paddle_pooled_without_ceil", (2, 3, 9, 9), dtype)
    assert cases["normal"].passed and cases["large"].passed
    assert not cases["resized"].passed
    assert cases["resized"].worst.norm_rel > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_equal_pooling_pair_passes_at_both_sizes(dtype):
    cases = cases_of("torch_pooled", "paddle_pooled", (2, 3, 9, 9), dtype)
    assert set(cases) == {"normal", "large", "resized"} and all(c.passed for c in cases.values())


def test_a_model_taking_one_size_skips_the_probe_with_a_note():
    pair = ModelPair.from_factories(f"{FIXTURE}:torch_fixed", f"{FIXTURE}:paddle_fixed", input_shape=(2, 3, 6, 6))
    cases = check_spec(pair)
    assert len(cases) == 5 and all(c.passed for c in cases) and "resized" not in {c.probe for c in cases}
    notes = [n for c in cases for n in c.notes if "resized probe" in n]
    assert notes and "input 2,3,7,7" in notes[0] and "torch model's forward failed" in notes[0]


def test_a_spec_is_checked_at_its_own_size_only():
    from crossattn.spec import load_spec, resolve_spec

    pair = ModelPair.from_spec(load_spec(resolve_spec("se_default")))
    assert "resized" not in {c.probe for c in check_spec(pair, modes=("eval",))}
