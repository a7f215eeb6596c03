"""Exceptions for user mistakes: the CLI prints their message and exits 2, no traceback."""

from __future__ import annotations

import contextlib
import reprlib
from collections.abc import Iterator, Sequence
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def shown(value: Any) -> str:
    """repr(value) cut short: a message about a bad value stays one line however big the value is."""
    return _SHORT.repr(value)


class CrossattnError(Exception):
    """A mistake in the user's input (a spec, a file, an argument), not a bug."""

    exit_code = 2


class OptionError(CrossattnError, ValueError):
    """An option value a block or model cannot be built with.

    `key` is the option's name, so spec loading can point at the file and line.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"option `{key}`: {message}")
        self.key = key
        self.message = message


class SpecError(CrossattnError):
    """A spec file that cannot be loaded; the message names file, key path and line."""

    def __init__(self, file: str, key: str | None, line: int | None, message: str) -> None:
        where = file
        if line is not None:
            where += f", line {line}"
        if key:
            where += f", key `{key}`"
        super().__init__(f"spec error in {where}: {message}")
        self.file = file
        self.key = key
        self.line = line
        self.message = message


class FrameworkMissing(CrossattnError):
    """A command needs a framework that is not installed."""


class TransferError(CrossattnError):
    """A weight transfer that cannot account for every tensor: a summary with the likely cause and fix.

    `problems` keeps every bad key, one line each, for JSON reports.
    """

    def __init__(self, problems: list[str], context: str = "weight transfer") -> None:
        from weight_transfer.problems import summarise

        super().__init__(summarise(problems, context))
        self.problems = problems
        self.context = context


class TrainingDiverged(CrossattnError):
    """Training met a non-finite loss, gradient or weight; the last good checkpoint is kept."""

    exit_code = 3


class ForwardError(CrossattnError):
    """A model's forward that fails on the input it was given: most often a shape the model does not take."""


#: what a forward raises on an input it cannot take (a shape, a channel count, a missing argument)
_INPUT_MISTAKES = (RuntimeError, ValueError, TypeError, IndexError, AssertionError)


def _summary(exc: BaseException) -> str:
    """The framework's own one-line reason (paddle's messages run to a C++ stack: its error line is kept)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line and not line.startswith(("File ", "[Hint"))]
    line = named[0] if named else lines[0] if lines else ""
    line = line if len(line) <= 300 else line[:297] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


@contextlib.contextmanager
def forward_of(framework: str, shape: Sequence[int]) -> Iterator[None]:
    """Within: a forward that fails on its input is reported as a mistake in the input shape, with the
    framework's reason, instead of a traceback."""
    try:
        yield
    except CrossattnError:
        raise
    except _INPUT_MISTAKES as exc:
        raise ForwardError(f"the {framework} model's forward failed on an input of shape {list(shape)} "
                           f"({_summary(exc)}); if that shape is not what the model takes, give the right one "
                           f"(--input-shape for your own pair, or the spec's input_shape)") from exc
