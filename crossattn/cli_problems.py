"""CLI glue: a failed transfer's full problem list goes to the command's --json file.

The error message stays a summary (weight_transfer/problems.py); nothing here
imports numpy or a framework, so `crossattn --help` stays instant.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable


def problems_to_json(command: Callable) -> Callable:
    """Decorate a command with a `json_path` parameter: a TransferError writes every problem there.

    The file holds {"error", "context", "problems": [{category, key, shapes, text}]}.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from crossattn.errors import TransferError

        try:
            return command(*args, **kwargs)
        except TransferError as exc:
            path = kwargs.get("json_path")
            if path:
                from crossattn.atomic import atomic_write_text
                from weight_transfer.problems import to_json

                atomic_write_text(path, json.dumps({"error": str(exc), "context": getattr(exc, "context", ""),
                                                    "problems": to_json(exc.problems)}, indent=2))
                exc.args = (f"{exc}. All {len(exc.problems)} problem(s) are listed in {path}",)
            raise

    return wrapper
