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


def to_json(cases: Sequence[CheckCase], settings: dict) -> str:
    return json.dumps({"settings": settings, "passed": all(c.passed for c in cases),
                       "cases": [c.to_json() for c in cases]}, indent=2)
