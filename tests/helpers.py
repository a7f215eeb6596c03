"""Shared test helpers: run the equivalence check and fail with the worst tensors named."""

from __future__ import annotations

from crossattn.check import check_spec
from crossattn.report import failure_details


def assert_twins_equivalent(spec, **kwargs) -> list:
    """Check `spec` in both directions and modes; fail naming every tensor that differs."""
    cases = check_spec(spec, **kwargs)
    assert cases, "the check produced no cases"
    failed = [c for c in cases if not c.passed]
    assert not failed, "twins differ:\n" + failure_details(failed)
    for case in cases:  # a model with parameters must have had their gradients compared
        assert case.copied == 0 or any(c.category == "param_grad" for c in case.comparisons), case
    return cases
