"""State transfer between twins: every target tensor filled, every source tensor used or recorded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from crossattn.errors import TransferError
from weight_transfer.rules import counterpart_name, rule_for, split_rule_for
from weight_transfer.slots import Slot, join


@dataclasses.dataclass
class TransferReport:
    """What a transfer did besides copying: the user sees each convention applied."""

    source: str
    target: str
    copied: int = 0
    transposed: list[str] = dataclasses.field(default_factory=list)
    renamed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reshaped: list[str] = dataclasses.field(default_factory=list)
    cast: list[str] = dataclasses.field(default_factory=list)
    #: source tensors with no twin in the target, with their values (e.g. num_batches_tracked)
    dropped: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: target tensors with no twin in the source, and the value given
    filled: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.copied} tensors {self.source}->{self.target}"]
        if self.transposed:
            parts.append(f"{len(self.transposed)} transposed")
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed")
        if self.reshaped:
            parts.append(f"{len(self.reshaped)} reshaped")
        if self.dropped:
            parts.append(f"{len(self.dropped)} recorded without twin ({_folded(self.dropped)})")
        if self.filled:
            parts.append(f"{len(self.filled)} filled ({_folded(self.filled)})")
        if self.cast:
            parts.append(f"{len(self.cast)} cast")
        return ", ".join(parts)


def _folded(keys: Iterable[str]) -> str:
    """Long name lists folded by tensor name: `num_batches_tracked of 155 layers`, not 155 names."""
    keys = sorted(keys)
    if len(keys) <= 3:
        return ", ".join(keys)
    counts: dict[str, int] = {}
    for key in keys:
        name = key.rpartition(".")[2]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} of {n} layers" for name, n in counts.items())


def _convert(value: np.ndarray, layout: str, target_shape: tuple[int, ...], to_framework: str) -> np.ndarray:
    if layout == "transpose" and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    if layout == "reshape" and value.size == int(np.prod(target_shape, dtype=np.int64)):
        return value.reshape(target_shape)
    return value


def transfer(source: Mapping[str, np.ndarray], source_framework: str, target_slots: Mapping[str, Slot],
             target_framework: str, complete: bool = True,
             context: str = "weight transfer") -> tuple[dict[str, np.ndarray], TransferReport]:
    """Map a source state dict onto the target model's slots.

    complete=True: every target slot must be filled and every source key used
    or recorded, else TransferError lists each problem. complete=False maps only
    what is present (used for gradients, which exist for trainable tensors only).
    """
    report = TransferReport(source_framework, target_framework)
    if source_framework == target_framework:
        raise TransferError([f"source and target are both {source_framework}"], context)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    used: set[str] = set()
    layer_kinds = {slot.layer: slot.kind for slot in target_slots.values()}
    for key, slot in target_slots.items():
        split = _split_source(source, slot, target_framework)
        if split is not None:
            source_keys, value = split
            if tuple(value.shape) != tuple(slot.shape):
                problems.append(f"mis-shaped `{'`+`'.join(source_keys)}`: {source_framework} shapes "
                                f"{[list(np.shape(source[k])) for k in source_keys]}, {target_framework} `{key}` "
                                f"expects {list(slot.shape)}")
                continue
            used.update(source_keys)
            report.renamed.append((" + ".join(source_keys), key))
            out[key] = value.astype(slot.dtype, copy=False)
            report.copied += 1
            continue
        source_name, rule = counterpart_name(slot.kind, slot.name, target_framework)
        if source_name is None:
            if complete:
                out[key] = np.full(slot.shape, rule.fill, dtype=slot.dtype)
                report.filled[key] = f"{rule.fill:g} ({rule.why})"
            continue
        source_key = join(slot.layer, source_name)
        if source_key not in source:
            if complete:
                split = split_rule_for(slot.kind, slot.name, target_framework)
                if split is not None:  # name the fused tensor (or its parts) the source lacks
                    rule_split, _ = split
                    names = (rule_split.torch_name,) if target_framework == "paddle" else rule_split.paddle_names
                    source_key = "`/`".join(join(slot.layer, n) for n in names if join(slot.layer, n) not in source)
                problems.append(f"missing `{source_key}` (for {target_framework} `{key}`, shape {list(slot.shape)})")
            continue
        used.add(source_key)
        value = np.asarray(source[source_key])
        layout = rule.layout if rule else "same"
        converted = _convert(value, layout, slot.shape, target_framework)
        if tuple(converted.shape) != tuple(slot.shape):
            laid_out = ""
            if layout == "transpose" and len(slot.shape) == 2:  # both shapes as the source framework names them
                laid_out = (f", which is {list(slot.shape[::-1])} in {source_framework}'s layout ({rule.why}): is the "
                            f"source already in {target_framework}'s layout?")
            problems.append(f"mis-shaped `{source_key}`: {source_framework} shape {list(value.shape)}, "
                            f"{target_framework} `{key}` expects {list(slot.shape)}{laid_out}")
            continue
        if layout == "transpose":
            report.transposed.append(key)
        elif layout == "reshape" and value.shape != converted.shape:
            report.reshaped.append(key)
        if source_key != key:
            report.renamed.append((source_key, key))
        if converted.dtype != np.dtype(slot.dtype):
            report.cast.append(f"{key}: {converted.dtype}->{slot.dtype}")
            if np.iscomplexobj(converted) and not np.issubdtype(np.dtype(slot.dtype), np.complexfloating):
                converted = converted.real  # refused earlier unless the user allowed the lossy cast
            converted = converted.astype(slot.dtype)
        out[key] = converted
        report.copied += 1
    for source_key in source:
        if source_key in used:
            continue
        layer, _, name = source_key.rpartition(".")
        kind = layer_kinds.get(layer)
        rule = rule_for(kind, name, source_framework) if kind else None
        other = rule and (rule.paddle_name if source_framework == "torch" else rule.torch_name)
        if rule is not None and other is None:
            # a copy: a view would keep the source's whole buffer alive (torch's memory-mapped file)
            report.dropped[source_key] = np.array(source[source_key], copy=True)
        elif complete:
            problems.append(f"unexpected `{source_key}` (shape {list(np.shape(source[source_key]))}): "
                            f"no {target_framework} tensor takes it")
    if problems:
        raise TransferError(problems, context)
    return out, report


def _split_source(source: Mapping[str, np.ndarray], slot: Slot,
                  target_framework: str) -> tuple[list[str], np.ndarray] | None:
    """A target tensor made from part of a fused source tensor, or from several source tensors fused.

    None when no split rule applies or the source holds the other form (torch's
    separate q/k/v weights, which the one-to-one rules take).
    """
    found = split_rule_for(slot.kind, slot.name, target_framework)
    if found is None:
        return None
    rule, index = found
    if target_framework == "paddle":
        fused_key = join(slot.layer, rule.torch_name)
        if fused_key not in source:
            return None
        value = np.asarray(source[fused_key])
        if value.ndim == 0 or value.shape[0] % len(rule.paddle_names):
            return [fused_key], value
        part = np.split(value, len(rule.paddle_names), axis=0)[index]
        return [fused_key], _convert(part, rule.layout, slot.shape, "paddle")
    part_keys = [join(slot.layer, name) for name in rule.paddle_names]
    if not all(k in source for k in part_keys):
        return None
    parts = [np.asarray(source[k]) for k in part_keys]
    if rule.layout == "transpose":
        parts = [p.T if p.ndim == 2 else p for p in parts]
    try:
        return part_keys, np.ascontiguousarray(np.concatenate(parts, axis=0))
    except ValueError:  # parts that do not stack: reported as mis-shaped
        return part_keys, np.empty((0,))


def canonical_key(slot: Slot, framework: str) -> str:
    """The torch-side name of a slot, so both twins agree on per-tensor identities."""
    if framework == "torch":
        return slot.key
    name, _ = counterpart_name(slot.kind, slot.name, "paddle")
    return join(slot.layer, name or slot.name)


def trainable_key(slot: Slot, framework: str) -> str:
    """`canonical_key`, with the parts of a split tensor counted as the fused torch tensor.

    Which tensors train is compared per torch tensor: paddle's q/k/v_proj
    weights (and torch's separate q/k/v_proj_weight) are all `in_proj_weight`.
    Initialisation keeps `canonical_key`, so the parts still draw apart.
    """
    name = slot.name if framework == "paddle" else counterpart_name(slot.kind, slot.name, "torch")[0]
    split = split_rule_for(slot.kind, name, "paddle") if name else None
    if split is not None:
        return join(slot.layer, split[0].torch_name)
    return canonical_key(slot, framework)


def map_layer_name(layer: str, layer_map: Mapping[str, str]) -> str:
    """`layer` renamed by its longest mapped prefix (`backbone` -> `features` renames `backbone.0.conv`).

    The empty prefix stands for the whole model: `{"": "backbone"}` renames `conv1` to `backbone.conv1`,
    and `{"backbone": ""}` takes the wrapper away again.
    """
    for prefix in sorted(layer_map, key=len, reverse=True):
        if prefix == "" or layer == prefix or layer.startswith(prefix + "."):
            rest = layer[len(prefix):].lstrip(".") if prefix else layer
            return join(layer_map[prefix], rest) if rest else layer_map[prefix]
    return layer


def rename_layers(slots: Mapping[str, Slot], layer_map: Mapping[str, str]) -> dict[str, Slot]:
    """Slots re-keyed through a layer-name map (own name -> other name), for pairs that do not share names.

    A layer is renamed by its longest mapped prefix, so mapping `backbone` to
    `features` also renames `backbone.0.conv`.
    """
    renamed: dict[str, Slot] = {}
    for slot in slots.values():
        layer = map_layer_name(slot.layer, layer_map)
        new = dataclasses.replace(slot, layer=layer, key=join(layer, slot.name))
        renamed[new.key] = new
    return renamed
