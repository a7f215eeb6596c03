"""A transfer's problems summarised for a person: counts, the first few, the likely cause and the fix.

A failed transfer of a real model easily lists hundreds of keys; one line of
20,000 characters helps nobody. The summary counts missing, unexpected and
mis-shaped tensors, shows the first few of each, names the likely cause (a
shared prefix, a transposed Linear, a fused layer, a BatchNorm counter, the
other framework's naming) and the option that would fix it. The full list stays
on the exception (`TransferError.problems`) for JSON reports.

Problems are the strings `weight_transfer.transfer`, `convert.validated` and the
adapters' `load_state` write: `missing `key` ...`, `unexpected `key` ...`,
`mis-shaped `key`: ... [a, b] ... [c, d]`. Pure Python: no framework import.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable

#: how many problems of each category the summary spells out
SHOWN = 3
CATEGORIES = ("missing", "unexpected", "mis-shaped")
_KEY = re.compile(r"`([^`]*)`")
_SHAPE = re.compile(r"\[([0-9, ]*)\]")


@dataclasses.dataclass(frozen=True)
class Problem:
    category: str  # missing | unexpected | mis-shaped | other
    key: str  # the source-side key the problem names first
    shapes: tuple[tuple[int, ...], ...]  # shapes in the order the text gives them
    text: str

    def to_json(self) -> dict:
        return {"category": self.category, "key": self.key, "shapes": [list(s) for s in self.shapes],
                "text": self.text}


def parse(text: str) -> Problem:
    category = next((c for c in CATEGORIES if text.startswith(c + " ")), "other")
    key_match = _KEY.search(text)
    shapes = tuple(tuple(int(v) for v in m.group(1).split(",") if v.strip()) for m in _SHAPE.finditer(text))
    return Problem(category, key_match.group(1) if key_match else "", shapes, text)


def _layer(key: str) -> str:
    return key.rpartition(".")[0]


def _name(key: str) -> str:
    return key.rpartition(".")[2]


def _shown(problems: list[Problem], category: str) -> str:
    text = "; ".join(p.text for p in problems[:SHOWN])
    return text + (f"; and {len(problems) - SHOWN} more {category}" if len(problems) > SHOWN else "")


def _prefix_cause(missing: list[Problem], unexpected: list[Problem]) -> str | None:
    """A prefix one side's keys carry and the other's lack: the most common rename explaining the pairs."""
    if not missing or not unexpected:
        return None
    wanted = {p.key for p in missing}
    votes: Counter[tuple[str, str]] = Counter()
    for u in unexpected:
        parts = u.key.split(".")
        for i in range(1, len(parts)):  # the source key minus a leading prefix is wanted
            if ".".join(parts[i:]) in wanted:
                votes[(".".join(parts[:i]) + ".", "")] += 1
        for w in wanted:  # the wanted key is the source key under an extra prefix
            if w.endswith("." + u.key):
                votes[("", w[: -len(u.key)])] += 1
    if not votes:
        return None
    (extra, lacking), count = votes.most_common(1)[0]
    if count < max(1, min(len(missing), len(unexpected)) // 2):
        return None
    if extra:
        return (f"the source's keys carry a prefix `{extra}` the model's lack ({count} of {len(unexpected)} "
                f"unexpected keys are wanted keys under it)")
    return (f"the model's keys carry a prefix `{lacking}` the source's lack ({count} of {len(missing)} missing "
            f"keys are source keys under it)")


def _causes(missing: list[Problem], unexpected: list[Problem], misshaped: list[Problem]) -> list[str]:
    causes = []
    prefix = _prefix_cause(missing, unexpected)
    if prefix:
        causes.append(prefix)
    transposed = [p for p in misshaped if len(p.shapes) >= 2 and len(p.shapes[0]) == 2
                  and p.shapes[0] == p.shapes[1][::-1]]
    if transposed:
        causes.append(f"{len(transposed)} 2-d weight(s) arrive transposed (e.g. `{transposed[0].key}` "
                      f"{list(transposed[0].shapes[0])} for {list(transposed[0].shapes[1])}): a Linear layer "
                      f"([out, in] in torch, [in, out] in paddle) that one side does not implement as Linear, or a "
                      f"file holding the other framework's naming (say which with --from)")
    fused = [p for p in misshaped if len(p.shapes) >= 2 and p.shapes[0] and p.shapes[1]
             and len(p.shapes[0]) == len(p.shapes[1]) and p.shapes[1][0]
             and p.shapes[0][0] % p.shapes[1][0] == 0 and p.shapes[0][0] // p.shapes[1][0] in (2, 3, 4)
             and p.shapes[0][1:] in (p.shapes[1][1:], p.shapes[1][1:][::-1])]
    keys = {p.key.rpartition(".")[2] for p in missing + unexpected}
    if fused or "in_proj_weight" in keys:
        example = f" (e.g. `{fused[0].key}` {list(fused[0].shapes[0])} for {list(fused[0].shapes[1])})" if fused else ""
        causes.append(f"a fused layer: one side keeps several projections in one tensor (torch's "
                      f"MultiheadAttention in_proj_weight = q, k, v stacked){example}; transfer splits it only when "
                      f"both layers are recognised as MultiheadAttention")
    missing_layers = {_layer(p.key) for p in missing}
    unexpected_layers = {_layer(p.key) for p in unexpected}
    if not prefix and missing and unexpected:
        shared = len(missing_layers & unexpected_layers)
        if shared <= min(len(missing_layers), len(unexpected_layers)) // 10:
            differ = (f"layer names differ between the two models ({len(unexpected_layers)} source layer(s) "
                      f"unknown to the model, {len(missing_layers)} model layer(s) not in the source")
            larger = max(len(missing_layers), len(unexpected_layers))
            if abs(len(missing_layers) - len(unexpected_layers)) > larger // 10:
                differ += "; that many more on one side suggests another architecture, not only other names"
            causes.insert(0, differ + ")")
    # a counter is a cause of its own only where the rest of its BatchNorm arrived (a layer not recognised
    # as BatchNorm); under a wrapper prefix or in a renamed layer it is one more symptom
    rest_unexpected = {_layer(p.key) for p in unexpected if not p.key.endswith("num_batches_tracked")}
    counters = [p for p in unexpected
                if p.key.endswith("num_batches_tracked") and _layer(p.key) not in rest_unexpected]
    if counters:
        causes.append(f"{len(counters)} `num_batches_tracked` counter(s) with no BatchNorm to take them: torch "
                      f"BatchNorm state where the model has none of that name (a renamed or missing BatchNorm)")
    unexpected_names = {_name(p.key) for p in unexpected}
    missing_names = {_name(p.key) for p in missing}
    if unexpected_names & {"running_mean", "running_var"} and missing_names & {"_mean", "_variance"}:
        causes.append("BatchNorm statistics named `running_mean`/`running_var` where `_mean`/`_variance` are "
                      "expected: torch naming read as paddle's")
    elif unexpected_names & {"_mean", "_variance"} and missing_names & {"running_mean", "running_var"}:
        causes.append("BatchNorm statistics named `_mean`/`_variance` where `running_mean`/`running_var` are "
                      "expected: paddle naming read as torch's")
    return causes


def _fixes(causes: list[str], missing: list[Problem], unexpected: list[Problem], converting: bool) -> list[str]:
    fixes = []
    names_differ = any(c.startswith(("the source's keys carry", "the model's keys carry", "layer names differ"))
                       for c in causes)
    if names_differ or (missing and unexpected and not causes):
        fixes.append("with the two models as your own pair (--torch-model MODULE:FACTORY --paddle-model "
                     "MODULE:FACTORY), let crossattn pair the layers: `--name-map auto` (it prints what it "
                     "assumed), or review the map first: `crossattn map --torch-model ... --paddle-model ... "
                     "-o names.yaml`, then `--name-map names.yaml`")
    extra = next((c.split("`")[1] for c in causes if c.startswith("the source's keys carry")), None)
    if extra and converting:
        fixes.append(f"if the checkpoint is of the unwrapped model saved under a wrapper: `--strip-prefix {extra}`")
    return fixes


def summarise(problems: Iterable[str], context: str = "weight transfer", json_hint: bool = False) -> str:
    """One paragraph: what failed, how many of each kind, the first few, the likely cause and the fix."""
    parsed = [parse(p) for p in problems]
    by = {c: [p for p in parsed if p.category == c] for c in (*CATEGORIES, "other")}
    counts = ", ".join(f"{len(by[c])} {c}" for c in CATEGORIES if by[c])
    if by["other"]:
        counts += (", " if counts else "") + f"{len(by['other'])} other"
    written = ", nothing was written" if context.startswith("convert") else ""  # check, diff, align write nothing
    parts = [f"{context} failed{written} ({len(parsed)} problem(s): {counts})"]
    for category in (*CATEGORIES, "other"):
        if by[category]:
            parts.append(_shown(by[category], category))
    causes = _causes(by["missing"], by["unexpected"], by["mis-shaped"])
    if causes:
        parts.append("likely cause: " + "; ".join(causes))
    fixes = _fixes(causes, by["missing"], by["unexpected"], context.startswith("converting"))
    if fixes:
        parts.append("fix: " + "; or ".join(fixes))
    if json_hint and len(parsed) > SHOWN:
        parts.append("every problem is listed in the JSON report (--json PATH)")
    return ". ".join(parts)


def to_json(problems: Iterable[str]) -> list[dict]:
    return [parse(p).to_json() for p in problems]

