"""A block spec nested in a model's options: parsing, channel filling and shape checks.

A model option such as `attention: {type: non_local, options: {...}}` names any
registered block. Its channel count is fixed by where the model inserts it, so
the model fills it in when the user leaves it out and rejects a wrong one with
the key path of the nested option.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from crossattn.errors import OptionError
from crossattn.spec import Spec

#: blocks that take x and a residual, which a model's single feature stream cannot feed
TWO_INPUT_BLOCKS = ("daf", "aff", "iaff")

#: the names blocks give the channel count of their input
CHANNEL_KEYS = ("in_channels", "channels")


def _fields(options_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(options_type)}


def channel_key(options_type: type) -> str | None:
    """The option holding a block's input channel count, if it has one."""
    return next((k for k in CHANNEL_KEYS if k in _fields(options_type)), None)


def with_channels(raw: Any, channels: int | None) -> Any:
    """`raw` with the block's channel option set to `channels` when it is a mapping that leaves it out."""
    from crossattn import registry

    if not isinstance(raw, Mapping) or channels is None:
        return raw
    options = raw.get("options") or {}
    type_name = raw.get("type")
    if not isinstance(options, Mapping) or not isinstance(type_name, str) or type_name not in registry.entries():
        return raw
    key = channel_key(registry.entry(type_name).options)
    if key is None or key in options:
        return raw
    return {**raw, "options": {**options, key: channels}}


def parse_block(key: str, raw: Any) -> Spec | None:
    """A nested block spec; errors keep the nested key path (`attention.options.mode`)."""
    if raw is None:
        return None
    if isinstance(raw, Mapping) and raw.get("type") in TWO_INPUT_BLOCKS:
        raise OptionError(f"{key}.type", f"`{raw['type']}` fuses two inputs (x and a residual); only a "
                          f"single-input block can be inserted after a stage")
    spec = Spec.coerce_option(key, raw)
    if spec.kind != "block":
        raise OptionError(f"{key}.type", f"`{spec.type}` is a model; only a block can be inserted")
    return spec


def check_block_fits(key: str, spec: Spec, channels: int, where: str) -> None:
    """The block must take and give back `channels` channels at `where`."""
    options = spec.options
    name = channel_key(type(options))
    if name is not None and getattr(options, name) != channels:
        raise OptionError(f"{key}.options.{name}",
                          f"must equal the {channels} channels {where}, got {getattr(options, name)}; "
                          f"leave it out to have it filled in")
    out = getattr(options, "out_channels", None)
    if out is not None and out != channels:
        raise OptionError(f"{key}.options.out_channels",
                          f"the inserted block must keep the {channels} channels {where}, got {out}")


def check_block_input(key: str, spec: Spec, shape: tuple[int, ...], where: str) -> None:
    """Re-raise the nested block's input-shape error as one about the model's input."""
    try:
        spec.options.check_input_shape(shape)
    except OptionError as exc:
        raise OptionError("input_shape", f"the `{key}` block {where} gets {list(shape)}: {exc.message}") from None


def require_single_input(key: str, spec: Spec, forward: Callable[..., Any]) -> None:
    """Blocks that fuse two inputs (aff, iaff, ...) cannot be inserted into a single stream."""
    params = [p for p in inspect.signature(forward).parameters.values()
              if p.default is inspect.Parameter.empty
              and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(params) != 1:
        raise OptionError(f"{key}.type", f"`{spec.type}` takes {len(params)} inputs; only a single-input "
                          f"block can be inserted into the network")
