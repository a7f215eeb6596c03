"""Top-k accuracy (one tie rule for both frameworks) and per-epoch metric files written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.atomic import atomic_write_text
from crossattn.errors import CrossattnError

METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                 "epoch_seconds", "images_per_second")


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Samples whose label is among the k largest logits; ties go to the lower class index."""
    order = np.argsort(-logits, axis=1, kind="stable")
    hits = order == labels[:, None]
    return {k: int(hits[:, :min(k, logits.shape[1])].any(axis=1).sum()) for k in ks}


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per finished epoch; a damaged file is named with its line, not a traceback."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CrossattnError(f"{path}: cannot read the run's metrics ({exc})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CrossattnError(f"{path}, line {number}: not a JSON row ({exc}); each line holds one finished "
                                 f"epoch's metrics as crossattn writes them (restore the file, or remove the "
                                 f"damaged lines and the epochs after them)") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise CrossattnError(f"{path}, line {number}: expected a JSON object with a whole-number `epoch`")
        rows.append(row)
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fields})
    return buffer.getvalue()


def write_metrics(run_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv whole (each atomically): a crash never leaves half a line."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(_json_safe(r)) + "\n" for r in rows))
    atomic_write_text(run_dir / "metrics.csv", _csv_text(rows, METRIC_FIELDS))


def _json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities as null: bare NaN tokens are not JSON, and other readers reject them."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def write_table_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    atomic_write_text(path, _csv_text(rows, fields))
