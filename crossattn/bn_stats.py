"""Which BatchNorm running-statistics rule a model follows: a spec's `bn_stats`, a training config's.

Kept free of numpy and the frameworks, so validating a spec stays cheap.
"""

from __future__ import annotations

#: how BatchNorm folds a training batch into its running statistics, shared by both twins:
#: torch: unbiased batch variance, the layer's momentum as given (torch's own rule);
#: paddle: biased batch variance, the retained fraction held in float32 (paddle's own rule);
#: native: each framework keeps its own rule (the two then differ in eval mode)
BN_STATS_RULES = ("torch", "paddle", "native")
BN_STATS_DEFAULT = "torch"


def bn_stats_rule(configured: str | None, spec: object | None = None) -> str:
    """The rule a run follows: a training config's `bn_stats` if it sets one, else the spec's, else torch's."""
    return configured or getattr(spec, "bn_stats", None) or BN_STATS_DEFAULT


def shared_bn_rule(spec: object | None) -> str | None:
    """The one rule a spec's twins both follow (`bn_stats: torch|paddle`), or None: each framework its own."""
    rule = getattr(spec, "bn_stats", None)
    return rule if rule in ("torch", "paddle") else None
