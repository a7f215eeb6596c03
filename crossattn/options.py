"""Typed option sets for blocks and models, validated once for both twins.

A block's options are a frozen dataclass. Spec loading parses raw YAML values
into it with `parse_options`, and each twin's constructor builds the same
dataclass from its keyword arguments, so a bad value fails the same way
whether it came from a spec or from Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from crossattn.errors import OptionError, shown

#: the largest integer option: the frameworks take sizes as 32-bit integers in places
MAX_INT = 2**31 - 1
#: the largest float option magnitude: the frameworks hold scalars such as the learning rate in float32
MAX_FLOAT = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every option set; subclasses add fields and `validate`."""

    #: registry type name, set by subclasses (e.g. "non_local")
    type_name: ClassVar[str] = ""
    #: models that map (N, C, H, W) images to class scores, which `crossattn train` can train
    image_classifier: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, value, _hints(type(self))[field.name]))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise OptionError naming the offending key."""

    def coerce_early(self, *names: str) -> None:
        """Check these fields first: a later step (filling a nested block) reads them, and a bad value
        must be blamed on its own key rather than on what it was copied into."""
        hints = _hints(type(self))
        for name in names:
            object.__setattr__(self, name, _coerce(name, getattr(self, name), hints[name]))

    def kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments for the twins (shallow: nested specs stay objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise OptionError(key="input_shape") when `shape` cannot be fed to the block."""


def parse_options(cls: type[Options], raw: Mapping[str, Any] | None, owner: str) -> Options:
    """Build `cls` from a raw mapping; unknown or missing keys raise OptionError."""
    raw = dict(raw or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise OptionError(
            str(unknown[0]),
            f"unknown option for {owner}; {hint}known options: {', '.join(names)}",
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise OptionError(missing[0], f"required option for {owner} is missing")
    try:
        return cls(**raw)
    except TypeError as exc:  # a dataclass signature problem is a bug, but say it plainly
        raise OptionError(names[0] if names else "options", str(exc)) from None


def option_errors(cls: type[Options], raw: Mapping[str, Any], owner: str) -> list[OptionError]:
    """Every problem of the individual options in `raw` (unknown, missing, mistyped), each on its own.

    Cross-field rules are not run here: they read several fields, so they are checked
    by `parse_options` once each field is sound.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    problems: list[OptionError] = []
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(OptionError(str(key), f"unknown option for {owner}; {hint}known options: {', '.join(names)}"))
    for field in dataclasses.fields(cls):
        if field.name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                problems.append(OptionError(field.name, f"required option for {owner} is missing"))
            continue
        if _nests(hints[field.name]):
            continue  # a nested block is completed by its model (channels filled in): checked by parse_options
        try:
            _coerce(field.name, raw[field.name], hints[field.name])
        except OptionError as exc:
            problems.append(exc)
    return problems


def _nests(annotation: Any) -> bool:
    """Whether an annotation holds a nested spec."""
    args = typing.get_args(annotation) or (annotation,)
    return any(isinstance(a, type) and hasattr(a, "coerce_option") for a in args)


def _hints(cls: type) -> dict[str, Any]:
    cache = cls.__dict__.get("_hints_cache")
    if cache is None:
        cache = typing.get_type_hints(cls)
        type.__setattr__(cls, "_hints_cache", cache)
    return cache


def describe(annotation: Any) -> str:
    """Human wording of a type annotation for error messages."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(inner)
        return text + " or null" if type(None) in args else text
    if origin in (tuple, list):
        if not args:
            return "a list"
        item = describe(args[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings"}.get(item, item)
        return f"a list of {plural}"
    if isinstance(annotation, type) and hasattr(annotation, "describe_type"):
        return annotation.describe_type()
    return getattr(annotation, "__name__", str(annotation))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against `annotation`; lists become tuples so options stay hashable."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    wrong = OptionError(key, f"expected {describe(annotation)}, got {shown(value)} ({_kind(value)})")
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            # a nested spec's own error (naming its inner key) beats "expected X or null"
            if isinstance(arg, type) and hasattr(arg, "coerce_option") and isinstance(value, Mapping):
                return arg.coerce_option(key, value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except OptionError:
                continue
        raise wrong
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise wrong
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                raise OptionError(key, f"{value} is out of range: the frameworks take integers here as 32-bit "
                                       f"values (at most {MAX_INT:,})")
            return value
        raise wrong
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > MAX_FLOAT:
                raise OptionError(key, f"{shown(value)} is out of range (at most {MAX_FLOAT:.4g} in magnitude)")
            number = float(value)
            if not math.isfinite(number):
                raise OptionError(key, f"expected a finite number, got {value}")
            if abs(number) > MAX_FLOAT:
                raise OptionError(key, f"{number:g} is out of range: the frameworks hold it as a float32, "
                                       f"at most {MAX_FLOAT:.4g} in magnitude")
            return number
        raise wrong
    if annotation is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong
        item_type = args[0] if args else Any
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item_type = args[0]
        elif origin is tuple and args and len(args) != len(value):
            raise wrong
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if isinstance(annotation, type) and hasattr(annotation, "coerce_option"):
        return annotation.coerce_option(key, value)
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise wrong


def require(condition: bool, key: str, message: str) -> None:
    """Raise OptionError(key, message) unless `condition` holds."""
    if not condition:
        raise OptionError(key, message)


def positive(value: int | None, key: str) -> None:
    require(value is None or value > 0, key, f"must be > 0, got {value}")


SPATIAL_NAMES = ("L", "H, W", "T, H, W")


def check_feature_map(shape: tuple[int, ...], channels: int, dimension: int = 2,
                      channel_key: str = "channels") -> None:
    """An input of shape (N, C, *spatial) with `dimension` spatial axes and C equal to option `channel_key`."""
    require(len(shape) == dimension + 2, "input_shape",
            f"takes {dimension + 2}-dimensional input (N, C, {SPATIAL_NAMES[dimension - 1]}), "
            f"got {len(shape)} dimensions")
    require(shape[1] == channels, "input_shape",
            f"channel dimension {shape[1]} does not match {channel_key} {channels}")
