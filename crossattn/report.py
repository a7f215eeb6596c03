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


def _mode(case: CheckCase) -> str:
    return case.mode if case.probe == "normal" else f"{case.mode}, x {case.probe}"


def _row(case: CheckCase, c: Comparison, count: str) -> list[str]:
    return [case.spec, case.direction, _mode(case), count, c.tensor, _num(c.max_abs), _num(c.norm_rel),
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
            lines.append(f"FAIL {case.spec} [{case.direction}, {_mode(case)}] {c.tensor} ({c.category}): "
                         f"max abs {_num(c.max_abs)}, norm rel {_num(c.norm_rel)}, {_num(c.severity)}x the "
                         f"allowed error (rtol {c.rtol:g}){'; ' + c.note if c.note else ''}")
    return "\n".join(lines)


def to_json(cases: Sequence[CheckCase], settings: dict, layers: list[dict] | None = None) -> str:
    data = {"settings": settings, "passed": all(c.passed for c in cases), "cases": [c.to_json() for c in cases]}
    if layers:
        data["layers"] = layers
    return json.dumps(data, indent=2)


def _cell(c: Comparison | None) -> str:
    return "-" if c is None else ("ok" if c.passed else "DIFF")


#: failing parameter gradients listed by name in a diff table
SHOWN_PARAMS = 5


def diff_table(report) -> str:
    """Layers in execution order with input, output and gradient verdicts; where each error first appears."""
    rows = []
    sources = {}
    if report.forward is not None:
        sources.setdefault(report.forward.layer, []).append("<- forward error appears here")
    if report.backward is not None:
        sources.setdefault(report.backward.layer, []).append("<- backward error appears here")
    for index, row in enumerate(report.rows, 1):
        grad = row.grad
        rows.append([str(index), row.layer or "(model)", row.candidate if row.candidate != row.layer else "",
                     _cell(row.input), _num(row.output.max_abs), _num(row.output.norm_rel), _cell(row.output),
                     _num(grad.max_abs) if grad else "-", _num(grad.norm_rel) if grad else "-", _cell(grad),
                     _cell(row.input_grad), " ".join(sources.get(row.layer, []))])
    header = ["#", "layer", "candidate name", "in", "out max abs", "out norm rel", "out", "grad max abs",
              "grad norm rel", "grad", "grad in", ""]
    mode = "single-step" if report.single_step else "accumulated"
    lines = [f"{report.title} [{report.direction}, {report.mode}, {mode}]", table(rows, header)]
    for row in report.rows:  # a shape difference reads as inf in the table: say what it is
        for what, c in (("input", row.input), ("output", row.output), ("gradient", row.grad),
                        ("input gradient", row.input_grad)):
            if c is not None and c.shape_mismatch:
                lines.append(f"`{row.layer or '(model)'}` {what}: {c.note.split(';')[0]}")
                break
    if report.end_to_end:
        lines.append("end to end (unfed run): " + ", ".join(
            f"{c.tensor.split(' ')[0]} norm rel {_num(c.norm_rel)} {'ok' if c.passed else 'DIFF'}"
            for c in report.end_to_end))
    failed_buffers = [c for c in report.buffers if not c.passed]
    if report.buffers:
        lines.append(f"buffers after the train step: {len(report.buffers) - len(failed_buffers)} of "
                     f"{len(report.buffers)} agree")
        for c in failed_buffers:
            lines.append(f"  DIFF {c.tensor}: norm rel {_num(c.norm_rel)}{'; ' + c.note if c.note else ''}")
    params = getattr(report, "param_grads", [])
    failed_params = [c for c in params if not c.passed]
    if params:
        lines.append(f"parameter gradients: {len(params) - len(failed_params)} of {len(params)} agree")
        for c in failed_params[:SHOWN_PARAMS]:
            lines.append(f"  DIFF {c.tensor}: norm rel {_num(c.norm_rel)}, {c.score:.2g}x the allowed error")
        if len(failed_params) > SHOWN_PARAMS:
            lines.append(f"  ... and {len(failed_params) - SHOWN_PARAMS} more (--json lists all)")
    failed_built = [c for c in getattr(report, "as_built", []) if not c.passed]
    if getattr(report, "as_built", []):
        lines.append(f"buffers as each factory builds them: {len(report.as_built) - len(failed_built)} of "
                     f"{len(report.as_built)} agree")
        for c in failed_built:
            lines.append(f"  DIFF {c.tensor}: {c.note.split(';')[0] if c.note else 'norm rel ' + _num(c.norm_rel)}")
    if report.unmatched_reference:
        lines.append("reference layers without a match: " + ", ".join(report.unmatched_reference))
    if report.unmatched_candidate:
        lines.append("candidate layers without a match: " + ", ".join(report.unmatched_candidate))
    for note in report.rounding:
        lines.append(f"note: {note}")
    if report.passed:
        lines.append("no layer diverges")
        return "\n".join(lines)
    for label, source in (("forward", report.forward), ("backward", report.backward)):
        if source is not None:
            lines.append(f"{label} error first appears in `{source.layer or '(model)'}`: {source.reason}")
    if report.first_output is not None:
        lines.append(f"first output divergence: `{report.first_output or '(model)'}`")
    if report.first_grad is not None:
        lines.append(f"first gradient divergence (backward order): gradient arriving at "
                     f"`{report.first_grad or '(model)'}`")
    if report.forward is None and report.backward is None and not failed_buffers and any(
            not c.passed for c in report.end_to_end):
        lines.append("the end-to-end result differs although no layer does: code outside every traced layer")
    if failed_built:
        lines.append(f"the factories build `{failed_built[0].tensor.removesuffix(' [as built]')}` differently: the "
                     f"traced run gives both models the source's value, so no layer differs here; the model built "
                     f"by the candidate's factory runs with its own")
    if (report.forward is None and report.backward is None and report.first_output is None
            and report.first_grad is None and failed_params):
        lines.append(f"the gradient of `{failed_params[0].tensor.removesuffix('.grad')}` differs although every "
                     f"layer's output and gradients agree: the code that uses that parameter treats it otherwise "
                     f"on one side (detached, frozen, or used by code between layers)")
    return "\n".join(lines)
