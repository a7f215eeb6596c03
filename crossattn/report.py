"""Plain-text tables and JSON for check results."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from crossattn.check import CheckCase
from crossattn.compare import Comparison


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2e}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _row(case: CheckCase, c: Comparison, count: str) -> list[str]:
    return [case.spec, case.direction, case.mode, count, c.tensor, _num(c.max_abs), _num(c.norm_rel),
            f"{c.cosine:.9f}" if math.isfinite(c.cosine) else "nan", "PASS" if c.passed else "FAIL"]


HEADER = ["spec", "direction", "mode", "tensors", "worst tensor", "max abs", "norm rel", "cosine", "verdict"]


def summary_table(cases: Sequence[CheckCase], full: bool = False) -> str:
    """One row per (spec, direction, mode) naming its worst tensor; every tensor with full=True."""
    rows = []
    for case in cases:
        if full:
            rows += [_row(case, c, "") for c in case.comparisons]
        else:
            rows.append(_row(case, case.worst, str(len(case.comparisons))))
    header = HEADER if not full else [*HEADER[:3], "", "tensor", *HEADER[5:]]
    return table(rows, header)


def failure_details(cases: Sequence[CheckCase]) -> str:
    lines = []
    for case in cases:
        for c in case.failures:
            lines.append(f"FAIL {case.spec} [{case.direction}, {case.mode}] {c.tensor} ({c.category}): "
                         f"max abs {_num(c.max_abs)} > atol {c.atol:g} and norm rel {_num(c.norm_rel)} > rtol "
                         f"{c.rtol:g}{'; ' + c.note if c.note else ''}")
    return "\n".join(lines)


def to_json(cases: Sequence[CheckCase], settings: dict, layers: list[dict] | None = None) -> str:
    data = {"settings": settings, "passed": all(c.passed for c in cases), "cases": [c.to_json() for c in cases]}
    if layers:
        data["layers"] = layers
    return json.dumps(data, indent=2)


def diff_table(report) -> str:
    """Layers in execution order with output and gradient errors; the first divergences marked."""
    rows = []
    for index, row in enumerate(report.rows, 1):
        mark = []
        if row.layer == report.first_output:
            mark.append("<- first output divergence")
        if row.layer == report.first_grad:
            mark.append("<- first gradient divergence")
        grad = row.grad
        rows.append([str(index), row.layer or "(model)", row.candidate if row.candidate != row.layer else "",
                     _num(row.output.max_abs), _num(row.output.norm_rel), "ok" if row.output.passed else "DIFF",
                     _num(grad.max_abs) if grad else "-", _num(grad.norm_rel) if grad else "-",
                     ("ok" if grad.passed else "DIFF") if grad else "-", " ".join(mark)])
    header = ["#", "layer", "candidate name", "out max abs", "out norm rel", "out", "grad max abs",
              "grad norm rel", "grad", ""]
    mode = "single-step" if report.single_step else "accumulated"
    lines = [f"{report.title} [{report.direction}, {report.mode}, {mode}]", table(rows, header)]
    if report.unmatched_reference:
        lines.append("reference layers without a match: " + ", ".join(report.unmatched_reference))
    if report.unmatched_candidate:
        lines.append("candidate layers without a match: " + ", ".join(report.unmatched_candidate))
    if report.passed:
        lines.append("no layer diverges")
    else:
        if report.first_output is not None:
            lines.append(f"first output divergence: `{report.first_output or '(model)'}`")
        if report.first_grad is not None:
            lines.append(f"first gradient divergence (backward order): gradient arriving at "
                         f"`{report.first_grad or '(model)'}`, computed by the layers consuming its output")
    return "\n".join(lines)
