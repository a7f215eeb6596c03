"""The naming and layout rules between torch and paddle state dicts, keyed by layer kind.

A tensor not covered by a rule keeps its name and layout. Measured equal in both
frameworks (tests/test_layer_kinds.py): conv weights of every rank, grouped and
depthwise included, [out, in/groups, *k]; transposed conv weights [in, out/groups, *k]
(paddle's Conv*DTranspose and torch's ConvTranspose*d agree, groups > 1 too);
Embedding [num, dim]; GroupNorm weight/bias [C]; biases.
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
    # MultiheadAttention with kdim/vdim unlike embed_dim: torch keeps separate [out, in] projections
    Rule("mha", "q_proj_weight", "q_proj.weight", "transpose", "paddle's q_proj is a Linear ([in, out])"),
    Rule("mha", "k_proj_weight", "k_proj.weight", "transpose", "paddle's k_proj is a Linear ([in, out])"),
    Rule("mha", "v_proj_weight", "v_proj.weight", "transpose", "paddle's v_proj is a Linear ([in, out])"),
)


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """One torch tensor that paddle keeps as several, stacked along torch's axis 0 in `paddle_names` order."""

    kind: str
    torch_name: str
    paddle_names: tuple[str, ...]
    layout: Layout  # of each part, as for a Rule
    why: str


SPLIT_RULES: tuple[SplitRule, ...] = (
    SplitRule("mha", "in_proj_weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"), "transpose",
              "torch fuses MultiheadAttention's q/k/v projections into one [3E, E] weight; paddle has three "
              "Linear layers ([in, out])"),
    SplitRule("mha", "in_proj_bias", ("q_proj.bias", "k_proj.bias", "v_proj.bias"), "same",
              "torch fuses MultiheadAttention's q/k/v biases into one [3E] bias"),
)


def split_rule_for(kind: str, name: str, framework: str) -> tuple[SplitRule, int] | None:
    """The split rule tensor `name` of a `kind` layer takes part in, and its part index (-1: the fused torch one)."""
    for rule in SPLIT_RULES:
        if rule.kind != kind:
            continue
        if framework == "torch" and rule.torch_name == name:
            return rule, -1
        if framework == "paddle" and name in rule.paddle_names:
            return rule, rule.paddle_names.index(name)
    return None


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
