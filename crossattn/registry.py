"""Spec type -> option set and one builder per framework, imported only when used.

Each module in `crossattn.blocks` and `crossattn.models` declares its entries
with `register(...)`; builders are "module:Class" strings, so looking up a spec
never imports torch or paddle.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Any, Literal

from crossattn.errors import OptionError, shown
from crossattn.options import Options

FRAMEWORKS = ("torch", "paddle")
_PACKAGES = {"torch": "torch_impl", "paddle": "paddle_impl"}


@dataclasses.dataclass(frozen=True)
class Entry:
    type: str
    kind: Literal["block", "model"]
    options: type[Options]
    builder: str  # "blocks.non_local:NonLocalBlock", relative to torch_impl / paddle_impl
    summary: str


_ENTRIES: dict[str, Entry] = {}
_discovered = False


def register(type_name: str, kind: Literal["block", "model"], options: type[Options], builder: str,
             summary: str) -> None:
    """Declare a spec type; the twin classes live at the same path in both impl packages."""
    if type_name in _ENTRIES and _ENTRIES[type_name].builder != builder:
        raise RuntimeError(f"spec type {shown(type_name)} registered twice")
    options.type_name = type_name
    _ENTRIES[type_name] = Entry(type_name, kind, options, builder, summary)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package_name in ("crossattn.blocks", "crossattn.models"):
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")


def entries() -> dict[str, Entry]:
    _discover()
    return dict(sorted(_ENTRIES.items()))


def entry(type_name: Any, key: str = "type") -> Entry:
    """The entry for `type_name`; an unknown name lists the known ones."""
    _discover()
    if not isinstance(type_name, str) or type_name not in _ENTRIES:
        known = ", ".join(sorted(_ENTRIES))
        close = _closest_type(type_name) if isinstance(type_name, str) else None
        hint = f"did you mean `{close}`? " if close else ""
        raise OptionError(key, f"unknown type {shown(type_name)}; {hint}known types: {known}")
    return _ENTRIES[type_name]


def _closest_type(name: str) -> str | None:
    """A misspelt type, or a known one with a word added (`se_block` for `se`)."""
    close = difflib.get_close_matches(name, sorted(_ENTRIES), n=1)
    if close:
        return close[0]
    extended = [known for known in _ENTRIES if name.startswith(known + "_")]
    return max(extended, key=len) if extended else None


def twin_class(type_name: str, framework: str) -> type:
    """Import the framework's twin class for `type_name` (imports that framework)."""
    from crossattn.frameworks import require

    require(framework)
    module_path, class_name = entry(type_name).builder.split(":")
    module = importlib.import_module(f"{_PACKAGES[framework]}.{module_path}")
    return getattr(module, class_name)


def build(spec: Any, framework: str) -> Any:
    """Build the twin of `spec` in `framework` with the spec's options."""
    cls = twin_class(spec.type, framework)
    model = cls(**spec.options.kwargs())
    if getattr(spec, "bn_stats", None):
        importlib.import_module(f"{framework}_impl.layers").apply_bn_stats(model, spec.bn_stats)
    return model
