"""Full-size model specs: lazily built twins read the same slots; the 64x64 checks behind the slow mark."""

from __future__ import annotations

import dataclasses

import pytest

from crossattn.spec import load_spec, resolve_spec, shipped_spec_paths
from tests.helpers import assert_twins_equivalent
from crossattn.model_pair import ModelPair

FULL_SIZE = ["se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152", "gcnet_seg"]
BLOCKS = [p.stem for p in shipped_spec_paths() if p.parent.name == "blocks"]


def _same_slots_lazy_and_built(name: str) -> None:
    pair = ModelPair.from_spec(load_spec(resolve_spec(name)))
    from crossattn.frameworks import adapter

    for framework in ("torch", "paddle"):
        lazy = pair.slots(framework)
        built = adapter(framework).slots(pair.build(framework))
        assert lazy == built, f"{name} {framework}"


@pytest.mark.parametrize("name", BLOCKS[::4] + ["resnet18_nl_embedded_gaussian", "hybrid_sn_attention"])
def test_lazy_build_reads_the_slots_a_real_build_has(name):
    """Conversion reads slots from models built without storage: they must be the real ones."""
    _same_slots_lazy_and_built(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in shipped_spec_paths()])
def test_lazy_build_slots_every_shipped_spec(name):
    _same_slots_lazy_and_built(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_models_at_64_pixels(name):
    """The shipped specs run these at 48x48 for speed; the full 64x64 input is checked here."""
    spec = load_spec(resolve_spec(name))
    assert spec.input_shape == (2, 3, 48, 48)
    assert_twins_equivalent(dataclasses.replace(spec, input_shape=(2, 3, 64, 64)))
