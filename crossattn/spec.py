"""YAML spec files -> validated `Spec` objects.

A spec names a registered type and its options; the same Spec builds the torch
and the paddle twin. Errors name the file, the key path and the line, and say
what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any



from crossattn.atomic import note_input
from crossattn.errors import CrossattnError, OptionError, SpecError, shown
from crossattn.options import MAX_INT, Options, option_errors, parse_options

SPECS_DIR = Path(__file__).resolve().parent / "specs"
TOP_LEVEL_KEYS = ("type", "name", "description", "input_shape", "bn_stats", "options")


class LineDict(dict):
    """A mapping that remembers the line of each key, for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}
        self.line: int | None = None


@functools.cache
def _line_loader() -> type:
    """Safe YAML loader whose mappings record key lines and reject duplicate keys (made at first use: `yaml` is
    imported only by commands that read YAML, not by `crossattn specs` or `--help`)."""
    import yaml

    class LineLoader(yaml.SafeLoader):
        pass

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    # `5e-4` is a number, as YAML 1.2 and every other reader say; YAML 1.1 (PyYAML) wants `5.0e-4`
    exponent_only = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")
    LineLoader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_only, list("-+0123456789"))
    return LineLoader


def _construct_mapping(loader: Any, node: Any) -> LineDict:
    import yaml

    loader.flatten_mapping(node)
    mapping = LineDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain name, got {shown(key)}",
                                                    key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)} (first at line {mapping.lines[key]})", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = line
    return mapping



@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated block or model description, framework-neutral."""

    type: str
    options: Options
    name: str = ""
    description: str = ""
    input_shape: tuple[int, ...] | None = None
    path: str | None = None
    #: BatchNorm running-statistics rule both twins follow (conventions.BN_STATS_RULES); None: each its own
    bn_stats: str | None = None

    @property
    def kind(self) -> str:
        from crossattn import registry

        return registry.entry(self.type).kind

    # Lets an Options field be annotated with `Spec` (a nested block in a model).
    @classmethod
    def describe_type(cls) -> str:
        return "a mapping with `type` and `options`"

    @classmethod
    def coerce_option(cls, key: str, value: Any) -> "Spec":
        if isinstance(value, Spec):
            return value
        if not isinstance(value, Mapping):
            raise OptionError(key, f"expected {cls.describe_type()}, got {shown(value)}")
        return _parse_component(value, key)


def _parse_component(raw: Mapping[str, Any], key: str) -> Spec:
    """Parse a nested `{type, options}` mapping; errors keep the nested key path."""
    from crossattn import registry

    allowed = ("type", "options")
    for k in raw:
        if k not in allowed:
            raise OptionError(f"{key}.{k}", f"unknown key; a nested spec has only {', '.join(allowed)}")
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        raise OptionError(f"{key}.type", f"expected a block type name, got {shown(type_name)}")
    entry = registry.entry(type_name, key=f"{key}.type")
    opts_raw = raw.get("options")
    if opts_raw is None:
        opts_raw = {}
    if not isinstance(opts_raw, Mapping):
        raise OptionError(f"{key}.options", f"expected a mapping, got {shown(opts_raw)}")
    try:
        options = parse_options(entry.options, opts_raw, f"type `{type_name}`")
    except OptionError as exc:
        raise OptionError(f"{key}.options.{exc.key}", exc.message) from None
    return Spec(type=type_name, options=options)


def line_of(raw: Any, path: list[str]) -> int | None:
    """Walk `path` (keys, with `[i]` list indices stripped) through LineDicts to a line."""
    node, line = raw, getattr(raw, "line", None)
    for part in path:
        name = part.split("[", 1)[0]
        key = next((k for k in node if str(k) == name), None) if isinstance(node, LineDict) else None
        if key is None:
            break  # a YAML key like `1:` or `true:` is matched by its text
        line = node.lines.get(key, line)
        node = node[key]
    return line


def parse_spec(raw: Any, file: str = "<spec>") -> Spec:
    """Validate a loaded YAML document into a Spec; the first problem found is raised."""
    spec, problems = collect_spec(raw, file)
    if problems:
        raise problems[0]
    assert spec is not None
    return spec


def collect_spec(raw: Any, file: str = "<spec>") -> tuple[Spec | None, list[SpecError]]:
    """Validate a loaded YAML document, collecting every problem rather than stopping at the first.

    Each option is checked on its own, so a file with three bad keys reports three
    errors; cross-field rules (`validate`) and the input shape are checked once the
    options they read are sound. Returns (the Spec or None, the problems in file order).
    """
    from crossattn import registry

    problems: list[SpecError] = []
    if not isinstance(raw, Mapping):
        return None, [SpecError(file, None, getattr(raw, "line", None), "expected a mapping with at least a `type` key")]
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(SpecError(file, str(key), line_of(raw, [str(key)]),
                                      f"unknown top-level key; {hint}known keys: {', '.join(TOP_LEVEL_KEYS)}"))
    for text_key in ("name", "description"):
        if text_key in raw and not isinstance(raw[text_key], str):
            problems.append(SpecError(file, text_key, line_of(raw, [text_key]),
                                      f"expected a string, got {shown(raw[text_key])}"))
    input_shape = raw.get("input_shape")
    shape_ok = input_shape is None
    if input_shape is not None:
        if not (isinstance(input_shape, list) and input_shape
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)):
            problems.append(SpecError(file, "input_shape", line_of(raw, ["input_shape"]),
                                      f"expected a list of positive integers (N, C, ...), got {shown(input_shape)}"))
        elif max(input_shape) > MAX_INT:
            problems.append(SpecError(file, "input_shape", line_of(raw, ["input_shape"]),
                                      f"dimension {max(input_shape)} is out of range: the frameworks take "
                                      f"dimensions as 32-bit integers (at most {MAX_INT:,})"))
        else:
            input_shape, shape_ok = tuple(input_shape), True
    from crossattn.bn_stats import BN_STATS_RULES

    bn_stats = raw.get("bn_stats")
    if bn_stats is not None and bn_stats not in BN_STATS_RULES:
        close = difflib.get_close_matches(str(bn_stats), BN_STATS_RULES, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        problems.append(SpecError(file, "bn_stats", line_of(raw, ["bn_stats"]),
                                  f"{hint}expected one of {', '.join(BN_STATS_RULES)} (how BatchNorm folds "
                                  f"batches into its running statistics in both twins), got {shown(bn_stats)}"))
    if "type" not in raw:
        problems.append(SpecError(file, "type", getattr(raw, "line", None),
                                  "missing: every spec names a registered type"))
        return None, _in_file_order(problems)
    type_name = raw["type"]
    try:
        entry = registry.entry(type_name)
    except OptionError as exc:
        problems.append(SpecError(file, "type", line_of(raw, ["type"]), exc.message))
        return None, _in_file_order(problems)
    opts_raw = raw.get("options")
    if opts_raw is None:
        opts_raw = LineDict()
    if not isinstance(opts_raw, Mapping):
        problems.append(SpecError(file, "options", line_of(raw, ["options"]),
                                  f"expected a mapping, got {shown(opts_raw)}"))
        return None, _in_file_order(problems)

    def as_spec_error(exc: OptionError) -> SpecError:
        path = ["options", *exc.key.split(".")]
        return SpecError(file, ".".join(path), line_of(raw, path), exc.message)

    option_problems = [as_spec_error(e) for e in option_errors(entry.options, opts_raw, f"type `{type_name}`")]
    options = None
    if not option_problems:
        try:
            options = parse_options(entry.options, opts_raw, f"type `{type_name}`")
        except OptionError as exc:
            option_problems.append(as_spec_error(exc))
    problems += option_problems
    if options is not None and shape_ok and input_shape is not None:
        try:
            options.check_input_shape(input_shape)
        except OptionError as exc:
            problems.append(SpecError(file, "input_shape", line_of(raw, ["input_shape"]), exc.message))
    if problems or options is None:
        return None, _in_file_order(problems)
    name = raw.get("name") or (Path(file).stem if file != "<spec>" else type_name)
    return Spec(type=type_name, options=options, name=name, description=raw.get("description", ""),
                input_shape=input_shape, path=file, bn_stats=bn_stats), []


def _in_file_order(problems: list[SpecError]) -> list[SpecError]:
    """Problems sorted by line (stable), those without a line first, as a reader meets them."""
    return sorted(problems, key=lambda p: p.line if p.line is not None else 0)


#: YAML files larger than this are refused before reading (specs and configs are a few hundred bytes)
MAX_YAML_BYTES = 1 << 20
#: deepest nesting of mappings and lists a file may have (the shipped ones nest 5 levels)
MAX_YAML_DEPTH = 32


def read_text_file(path: str | Path, missing_hint: str, limit: int = MAX_YAML_BYTES) -> str:
    """A small regular text file's content; never opens a named pipe, device or folder (that could hang)."""
    file = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(file, None, None, f"no such file; {missing_hint}") from None
    except OSError as exc:
        raise SpecError(file, None, None, f"cannot read the file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a named pipe" if stat.S_ISFIFO(info.st_mode)
                else "a device or socket")
        raise SpecError(file, None, None, f"is {kind}, not a regular file; pass a YAML file")
    if info.st_size > limit:
        raise SpecError(file, None, None, f"is {info.st_size:,} bytes; a YAML file here is at most {limit:,} "
                                          f"bytes (is it the right file?)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError(file, None, None, f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SpecError(file, None, None, f"is larger than {limit:,} bytes; a YAML file here is smaller")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(file, None, None, f"is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    note_input(path, "YAML file")
    return text


def _check_depth(text: str, file: str) -> None:
    """Refuse deep nesting from the token stream (iterative), before the recursive parser sees it."""
    import yaml

    depth = 0
    starts = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
              yaml.BlockMappingStartToken)
    ends = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, starts):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SpecError(file, None, token.start_mark.line + 1,
                                f"nests more than {MAX_YAML_DEPTH} levels of mappings or lists; "
                                f"a spec or config needs only a few")
        elif isinstance(token, ends):
            depth -= 1


def read_yaml(path: str | Path, missing_hint: str) -> Any:
    """Load a YAML file with key lines recorded; every failure is a SpecError naming the file (and line)."""
    import yaml

    file = str(path)
    text = read_text_file(path, missing_hint)
    try:
        _check_depth(text, file)
        return yaml.load(text, Loader=_line_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError(file, None, line, f"malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(file, None, None, f"malformed YAML: {exc}") from None
    except RecursionError:  # aliases can nest deeper than the text does
        raise SpecError(file, None, None, "nests too deep (through anchors and aliases); "
                                          "a spec or config needs only a few levels") from None


def resolve_named(arg: str, folder: Path, what: str) -> Path:
    """A path, or the stem of a shipped YAML file in `folder`; an unknown name lists the shipped ones."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    shipped = folder / f"{arg}.yaml"
    if shipped.is_file():
        return shipped
    raise SpecError(arg, None, None, f"no such file and no shipped {what} of that name; "
                                     f"{_closest(arg, [p.stem for p in sorted(folder.glob('*.yaml'))])}")


def _closest(arg: str, names: list[str]) -> str:
    """`did you mean` the nearest shipped names (difflib), not the whole list."""
    import difflib

    near = difflib.get_close_matches(arg, names, n=3, cutoff=0.5)
    if not near:  # a partial name: the shipped names that contain it
        near = [n for n in names if arg.lower() in n.lower()][:3]
    if near:
        return "did you mean " + " or ".join(f"`{n}`" for n in near) + "? (`crossattn specs` lists all)"
    return f"{len(names)} are shipped: `crossattn specs` lists them"


def validate_file(arg: str) -> tuple[Spec | None, list[CrossattnError], list[str]]:
    """(spec, every error, warnings) for one spec argument, framework-free: what `validate` prints.

    Warnings name what a later command refuses: a spec without input_shape cannot
    be checked, traced or verified. Sizes that could never fit in memory are errors.
    """
    try:
        path = resolve_spec(arg)
        raw = read_yaml(path, "pass a spec path or a shipped spec name (see `crossattn specs`)")
    except CrossattnError as exc:
        return None, [exc], []
    spec, problems = collect_spec(raw, str(path))
    errors: list[CrossattnError] = list(problems)
    warnings: list[str] = []
    if spec is not None:
        if spec.input_shape is None:
            warnings.append(f"{path}: no `input_shape`; `check`, `diff` and `convert` (which verifies) refuse a "
                            f"spec without one: add e.g. `input_shape: [2, C, H, W]`")
        else:
            from crossattn.bounds import TooLarge, input_lower_bound, refuse_over_budget

            try:
                refuse_over_budget(input_lower_bound(spec.input_shape),
                                   f"`check` with input_shape {list(spec.input_shape)}", str(path), "input_shape")
            except TooLarge as exc:
                errors.append(exc)
    return (spec if not errors else None), errors, warnings


def load_spec(path: str | Path) -> Spec:
    """Read and validate one spec file."""
    raw = read_yaml(path, "pass a spec path or a shipped spec name (see `crossattn specs`)")
    return parse_spec(raw, str(path))


def shipped_spec_paths(kind: str | None = None) -> list[Path]:
    """Every YAML spec shipped under crossattn/specs (blocks/ and models/), sorted."""
    folders = [kind + "s"] if kind else ["blocks", "models"]
    paths: list[Path] = []
    for folder in folders:
        paths.extend(sorted((SPECS_DIR / folder).glob("*.yaml")))
    return paths


def resolve_spec(arg: str) -> Path:
    """A spec argument is a path, or the name of a shipped spec (file stem)."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    for candidate in shipped_spec_paths():
        if candidate.stem == arg:
            return candidate
    if ":" in arg:
        raise SpecError(arg, None, None, "no such file and no shipped spec of that name; it reads as "
                                         "MODULE:FACTORY: pass your own models as --torch-model MODULE:FACTORY "
                                         "--paddle-model MODULE:FACTORY")
    raise SpecError(arg, None, None, f"no such file and no shipped spec of that name; "
                                     f"{_closest(arg, [p.stem for p in shipped_spec_paths()])}")
