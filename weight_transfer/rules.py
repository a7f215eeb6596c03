"""The naming and layout rules between torch and paddle state dicts, keyed by layer kind.

A tensor not covered by a rule keeps its name and layout (conv weights, biases,
norm affine parameters are laid out the same in both frameworks).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Layout = Literal["same", "transpose", "reshape"]


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    torch_name: str | None  # None: exists only in paddle
    paddle_name: str | None  # None: exists only in torch (recorded, never silently lost)
    layout: Layout
    why: str
    #: the value given, paddle -> torch, to a tensor only torch has (a variance starts at one)
    fill: float = 0.0


RULES: tuple[Rule, ...] = (
    Rule("linear", "weight", "weight", "transpose", "paddle stores Linear weights as [in, out]"),
    Rule("batchnorm", "running_mean", "_mean", "same", "BatchNorm running mean is named _mean in paddle"),
    Rule("batchnorm", "running_var", "_variance", "same", "BatchNorm running variance is named _variance in paddle"),
    Rule("batchnorm", "num_batches_tracked", None, "same",
         "paddle keeps no batch counter; it only matters for torch's momentum=None averaging"),
    Rule("layernorm", "weight", "weight", "reshape", "paddle stores LayerNorm affine parameters flattened"),
    Rule("instancenorm", "weight", "scale", "same", "paddle names InstanceNorm's affine weight `scale`"),
    Rule("instancenorm", "running_mean", None, "same", "paddle's InstanceNorm keeps no running statistics"),
    Rule("instancenorm", "running_var", None, "same", "paddle's InstanceNorm keeps no running statistics",
         fill=1.0),
    Rule("instancenorm", "num_batches_tracked", None, "same", "paddle's InstanceNorm keeps no running statistics"),
    Rule("prelu", "weight", "_weight", "same", "paddle names PReLU's slope `_weight`"),
    Rule("layernorm", "bias", "bias", "reshape", "paddle stores LayerNorm affine parameters flattened"),
)


def rule_for(kind: str, name: str, framework: str) -> Rule | None:
    """The rule for tensor `name` of a `kind` layer, named as in `framework`."""
    for rule in RULES:
        own = rule.torch_name if framework == "torch" else rule.paddle_name
        if rule.kind == kind and own == name:
            return rule
    return None


def counterpart_name(kind: str, name: str, framework: str) -> tuple[str | None, Rule | None]:
    """The other framework's name for tensor `name` (None when it has no twin)."""
    rule = rule_for(kind, name, framework)
    if rule is None:
        return name, None
    return (rule.paddle_name if framework == "torch" else rule.torch_name), rule
