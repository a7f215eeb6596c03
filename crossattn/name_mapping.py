"""Propose the layer-name map between a user's torch model and paddle model.

Two stages, each stating what it assumed:

1. Common prefixes: a wrapper that adds or removes leading components on one
   side (`backbone.`, `module.`, `model.encoder.`) is one map entry.
2. Structural matching for the layers still unmatched: same module order, same
   layer kind, same tensors with the same shapes (compared in one naming and
   layout, through the transfer rules). Where kinds and shapes cannot pair the
   layers one to one, the candidates are reported, never guessed.

The map is torch layer prefix -> paddle layer prefix, applied by longest prefix
(`weight_transfer.transfer.map_layer_name`); the empty prefix stands for every
layer. Pure Python over Slot tables: no framework is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from crossattn.errors import CrossattnError
from weight_transfer.rules import counterpart_name, rule_for, split_rule_for
from weight_transfer.slots import Slot
from weight_transfer.transfer import map_layer_name

#: how many layer pairs a note spells out before it counts the rest
SHOWN = 4


@dataclasses.dataclass
class NameMapProposal:
    """The proposed map, what was assumed to reach it, and what could not be decided."""

    mapping: dict[str, str]
    notes: list[str]
    ambiguous: list[str]


Signature = tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]


def _tensor_entries(slot: Slot, framework: str) -> list[tuple[str, tuple[int, ...]]]:
    """A tensor in paddle's naming and layout (torch's fused q/k/v in its parts); [] for one with no twin."""
    if framework == "torch":
        split = split_rule_for(slot.kind, slot.name, "torch")
        if split is not None:
            rule, _ = split
            n = len(rule.paddle_names)
            if not slot.shape or slot.shape[0] % n:
                return [(slot.name, slot.shape)]
            part = (slot.shape[0] // n, *slot.shape[1:])
            if rule.layout == "transpose" and len(part) == 2:
                part = part[::-1]
            return [(name, part) for name in rule.paddle_names]
        name, rule = counterpart_name(slot.kind, slot.name, "torch")
        if name is None:
            return []
    else:
        name, rule = slot.name, rule_for(slot.kind, slot.name, "paddle")
        if rule is not None and rule.torch_name is None:
            return []
    shape = slot.shape
    if rule is not None and rule.layout == "transpose" and framework == "torch" and len(shape) == 2:
        shape = shape[::-1]
    if rule is not None and rule.layout == "reshape":
        size = 1
        for dim in shape:
            size *= dim
        shape = (size,)
    return [(name, tuple(shape))]


def layer_signatures(slots: Mapping[str, Slot], framework: str) -> dict[str, Signature]:
    """Each layer that owns tensors, in module order, with its kind and tensors (paddle naming and layout)."""
    entries: dict[str, list] = {}
    kinds: dict[str, str] = {}
    for slot in slots.values():
        kinds.setdefault(slot.layer, slot.kind)
        entries.setdefault(slot.layer, []).extend(_tensor_entries(slot, framework))
    # a layer whose every tensor lacks a twin (torch's untracked-affine InstanceNorm statistics) has
    # nothing to map
    return {layer: (kinds[layer], tuple(sorted(entries[layer]))) for layer in entries if entries[layer]}


def _components(name: str) -> list[str]:
    return name.split(".") if name else []


def _map_one(layer: str, mapping: Mapping[str, str]) -> str:
    """`layer` renamed as the transfer renames it: longest prefix, "" the whole model, "" as target strips."""
    return map_layer_name(layer, mapping)


def _common_leading(names: list[str]) -> list[str]:
    parts = [_components(n) for n in names]
    if not parts:
        return []
    common = parts[0]
    for other in parts[1:]:
        n = 0
        while n < len(common) and n < len(other) and common[n] == other[n]:
            n += 1
        common = common[:n]
    # a layer itself is not a prefix of all layers unless others sit beneath it: keep at most len - 1 of the
    # shortest name, so the last component stays a layer's own name
    shortest = min(len(p) for p in parts)
    return common[:max(shortest - 1, 0)] if shortest == len(common) else common


def _describe_prefix(torch_prefix: str, paddle_prefix: str, layers: int) -> str:
    if not torch_prefix:
        return f"prefix `{paddle_prefix}.` added on the paddle side ({layers} layers)"
    if not paddle_prefix:
        return f"prefix `{torch_prefix}.` of the torch side removed ({layers} layers)"
    return f"prefix `{torch_prefix}.` (torch) renamed `{paddle_prefix}.` (paddle) ({layers} layers)"


def _prefix_candidates(torch_sigs: dict[str, Signature], paddle_sigs: dict[str, Signature]) -> set[tuple[str, str]]:
    """Leading-prefix swaps worth scoring: those common to every layer, and those a layer pair of equal
    kind and shapes implies (`conv1` and `backbone.conv1` imply `` -> `backbone`)."""
    lead_t, lead_p = _common_leading(list(torch_sigs)), _common_leading(list(paddle_sigs))
    candidates = {(".".join(lead_t[:i]), ".".join(lead_p[:j]))
                  for i in range(len(lead_t) + 1) for j in range(len(lead_p) + 1)}
    by_sig: dict[Signature, list[str]] = {}
    for p, sig in paddle_sigs.items():
        by_sig.setdefault(sig, []).append(p)
    for t, sig in torch_sigs.items():
        tc = _components(t)
        for p in by_sig.get(sig, []):
            pc = _components(p)
            n = 0
            while n < min(len(tc), len(pc)) and tc[-1 - n] == pc[-1 - n]:
                n += 1
            if n:
                candidates.add((".".join(tc[:len(tc) - n]), ".".join(pc[:len(pc) - n])))
    return candidates


def _prefix_stage(torch_sigs: dict[str, Signature], paddle_sigs: dict[str, Signature],
                  notes: list[str]) -> dict[str, str]:
    """The one leading-prefix swap that lets the most layers keep their names; {} when names already agree."""
    best: tuple[int, int, str, str] | None = None
    for t_prefix, p_prefix in sorted(_prefix_candidates(torch_sigs, paddle_sigs)):
        mapping = {t_prefix: p_prefix} if t_prefix != p_prefix else {}
        score = sum(paddle_sigs.get(_map_one(t, mapping)) == sig for t, sig in torch_sigs.items())
        size = len(_components(t_prefix)) + len(_components(p_prefix)) if mapping else 0
        if best is None or (score, -size) > best[:2]:
            best = (score, -size, t_prefix, p_prefix)
    identity = sum(paddle_sigs.get(t) == sig for t, sig in torch_sigs.items())
    score, _, t_prefix, p_prefix = best
    # a swap must explain most layers: one implied by a few look-alike layers (two blocks of equal shapes
    # in different stages) would pair them out of order; those are left to the structural stage
    if t_prefix == p_prefix or score <= identity or score < max(2, (len(torch_sigs) + 1) // 2):
        if identity:
            notes.append(f"{identity} of {len(torch_sigs)} torch layers have the same name, kind and shapes "
                         f"in paddle")
        return {}
    notes.append(_describe_prefix(t_prefix, p_prefix, score))
    return {t_prefix: p_prefix}


def _describe_sig(sig: Signature) -> str:
    kind, tensors = sig
    return f"{kind}: " + ", ".join(f"{name} {list(shape)}" for name, shape in tensors)


def _weight_shape(sig: Signature) -> tuple[int, ...] | None:
    return next((shape for name, shape in sig[1] if name.endswith("weight")), None)


def _fused_hint(sig: Signature, count: int, groups: Mapping[Signature, tuple[list[str], list[str]]]) -> str:
    """`; looks like ...` when a torch-only Linear/conv is k paddle-only ones stacked (a qkv projection)."""
    weight = _weight_shape(sig)
    if sig[0] not in ("linear", "conv") or weight is None or len(weight) < 2:
        return ""
    out_axis = 1 if sig[0] == "linear" else 0  # paddle layouts: Linear [in, out], conv [out, in, *k]
    for other, (ts, ps) in groups.items():
        part = _weight_shape(other)
        if other[0] != sig[0] or ts or part is None or len(part) != len(weight) or not part[out_axis]:
            continue
        k, rest = divmod(weight[out_axis], part[out_axis])
        same_rest = all(a == b for i, (a, b) in enumerate(zip(weight, part)) if i != out_axis)
        if not rest and k in (2, 3, 4) and same_rest and len(ps) == k * count:
            return (f"; they look like {k} of paddle's layers fused into one (e.g. q, k, v in one projection: "
                    f"{list(weight)} = {k} x {list(part)}); crossattn splits a fused projection only inside "
                    f"MultiheadAttention, so map those layers and split the tensor by hand")
    return ""


def _structural_stage(torch_left: list[str], paddle_left: list[str], torch_sigs: dict[str, Signature],
                      paddle_sigs: dict[str, Signature], notes: list[str],
                      ambiguous: list[str]) -> dict[str, str]:
    """Pair the unmatched layers by module order within each (kind, shapes) group of equal size."""
    pairs: dict[str, str] = {}
    if not torch_left and not paddle_left:
        return pairs
    same_sequence = [torch_sigs[t] for t in torch_left] == [paddle_sigs[p] for p in paddle_left]
    groups: dict[Signature, tuple[list[str], list[str]]] = {}
    for t in torch_left:
        groups.setdefault(torch_sigs[t], ([], []))[0].append(t)
    for p in paddle_left:
        groups.setdefault(paddle_sigs[p], ([], []))[1].append(p)
    for sig, (ts, ps) in groups.items():
        if len(ts) == len(ps):
            pairs.update(zip(ts, ps))
            continue
        shown_t = ", ".join(f"`{t}`" for t in ts[:SHOWN]) + (f" and {len(ts) - SHOWN} more" if len(ts) > SHOWN else "")
        shown_p = ", ".join(f"`{p}`" for p in ps[:SHOWN]) + (f" and {len(ps) - SHOWN} more" if len(ps) > SHOWN else "")
        if not ts or not ps:
            framework, other, shown = ("paddle", "torch", shown_p) if not ts else ("torch", "paddle", shown_t)
            fused = _fused_hint(sig, len(ts), groups) if ts else ""
            ambiguous.append(f"{len(ps) or len(ts)} {framework} layer(s) ({shown}) with no {other} layer of their "
                             f"kind and shapes ({_describe_sig(sig)}){fused}")
            continue
        ambiguous.append(f"{len(ts)} torch layer(s) ({shown_t}) but {len(ps)} paddle layer(s) ({shown_p}) of kind "
                         f"and shapes {_describe_sig(sig)}")
    if pairs:
        how = ("the two models' unmatched layers have the same sequence of kinds and shapes"
               if same_sequence else "layers paired in module order within each group of equal kind and shapes")
        shown = ", ".join(f"`{t}` -> `{p}`" for t, p in list(pairs.items())[:SHOWN])
        more = f" and {len(pairs) - SHOWN} more" if len(pairs) > SHOWN else ""
        notes.append(f"{len(pairs)} layers matched by structure ({how}; assumed: both models register their "
                     f"layers in the same order): {shown}{more}")
    return pairs


def _compressed(pairs: dict[str, str], base: dict[str, str], torch_layers: list[str]) -> dict[str, str]:
    """Per-layer pairs folded into prefix entries where a whole subtree is renamed alike."""
    mapping = dict(base)
    remaining = dict(pairs)
    while remaining:
        t, p = next(iter(remaining.items()))
        tc, pc = _components(t), _components(p)
        n = 0  # the common trailing components: the subtree's own names
        while n < min(len(tc), len(pc)) - 1 and tc[-1 - n] == pc[-1 - n]:
            n += 1
        chosen = (t, p)
        for k in range(n, 0, -1):  # the widest prefix whose whole subtree maps consistently
            t_pre, p_pre = ".".join(tc[:-k]), ".".join(pc[:-k])
            if not t_pre:
                continue
            under = [x for x in torch_layers if x == t_pre or x.startswith(t_pre + ".")]
            if all(x in remaining and remaining[x] == _map_one(x, {t_pre: p_pre}) for x in under):
                chosen = (t_pre, p_pre)
                break
        mapping[chosen[0]] = chosen[1]
        for x in [x for x in remaining if x == chosen[0] or x.startswith(chosen[0] + ".")]:
            if remaining[x] == _map_one(x, {chosen[0]: chosen[1]}):
                del remaining[x]
        remaining.pop(t, None)
    return mapping


def _settle(mapping: dict[str, str], wanted: Mapping[str, str]) -> None:
    """Give a layer its own entry wherever a prefix entry renames it wrongly, in either direction."""
    for _ in range(len(wanted) + 1):
        inverse = {v: k for k, v in mapping.items()}  # paddle -> torch transfers read the map backwards
        wrong = [t for t, p in wanted.items() if _map_one(t, mapping) != p or _map_one(p, inverse) != t]
        if not wrong:
            return
        mapping.update({t: wanted[t] for t in wrong})


def _container_pairs(wanted: Mapping[str, str], mapping: Mapping[str, str], torch_layers: list[str],
                     paddle_layers: list[str]) -> dict[str, str]:
    """Modules without tensors of their own (blocks, stages) paired where their whole subtrees correspond.

    Not needed to move weights; it lets `diff` compare block outputs too
    (`stage2.0` <-> `2_1`). A torch module pairs with the paddle module whose
    tensor layers are exactly the images of its own.
    """
    containers = {".".join(parts[:i]) for layer in torch_layers
                  for parts in [_components(layer)] for i in range(1, len(parts))} - set(torch_layers)
    images = set(wanted.values()) | set(mapping.values())
    out: dict[str, str] = {}
    for container in sorted(containers, key=lambda c: (c.count("."), c)):
        under = [t for t in torch_layers if t.startswith(container + ".")]
        if not all(t in wanted for t in under):
            continue
        own = {wanted[t] for t in under}
        implied = _map_one(container, mapping)  # the name the map gives it already (its own, unmapped)
        if implied and {p for p in paddle_layers if p.startswith(implied + ".")} == own:
            continue  # `blocks` is paddle's `blocks` too, though all its layers sit under `blocks.layers`
        mapped = [_components(wanted[t]) for t in under]
        n = 0
        while all(len(m) > n + 1 for m in mapped) and len({m[n] for m in mapped}) == 1:
            n += 1
        candidate = ".".join(mapped[0][:n])
        if not candidate or candidate in images or implied == candidate:
            continue
        if {p for p in paddle_layers if p.startswith(candidate + ".")} != own:
            continue
        out[container] = candidate
        images.add(candidate)
    return out


def _in_module_order(mapping: dict[str, str], torch_layers: list[str]) -> dict[str, str]:
    """Entries in the torch model's module order (a prefix where its first layer is), for a readable file."""
    def rank(prefix: str) -> tuple[int, int]:
        under = [i for i, layer in enumerate(torch_layers)
                 if not prefix or layer == prefix or layer.startswith(prefix + ".")]
        return (min(under) if under else len(torch_layers), len(prefix))

    return dict(sorted(mapping.items(), key=lambda item: rank(item[0])))


def propose_name_map(torch_slots: Mapping[str, Slot], paddle_slots: Mapping[str, Slot],
                     strict: bool = True) -> NameMapProposal:
    """The torch -> paddle layer-prefix map under which every tensor finds its twin.

    strict=True raises CrossattnError naming the candidates when some layers
    cannot be paired one to one; strict=False returns the partial map with
    those cases in `ambiguous` (for the user to settle by hand).
    """
    torch_sigs = layer_signatures(torch_slots, "torch")
    paddle_sigs = layer_signatures(paddle_slots, "paddle")
    notes: list[str] = []
    ambiguous: list[str] = []
    base = _prefix_stage(torch_sigs, paddle_sigs, notes)
    matched = {t: _map_one(t, base) for t, sig in torch_sigs.items() if paddle_sigs.get(_map_one(t, base)) == sig}
    taken = set(matched.values())
    torch_left = [t for t in torch_sigs if t not in matched]
    paddle_left = [p for p in paddle_sigs if p not in taken]
    pairs = _structural_stage(torch_left, paddle_left, torch_sigs, paddle_sigs, notes, ambiguous)
    mapping = _compressed(pairs, base, list(torch_sigs))
    wanted = {**matched, **pairs}
    _settle(mapping, wanted)
    containers = _container_pairs(wanted, mapping, list(torch_sigs), list(paddle_sigs))
    if containers:
        mapping.update(containers)
        wanted.update(containers)
        _settle(mapping, wanted)
    mapping = _in_module_order(mapping, list(torch_sigs))
    if not torch_sigs and not paddle_sigs:
        notes.insert(0, "neither model has state tensors: there is nothing to map")
    elif not mapping and not ambiguous:
        notes.insert(0, "layer names already agree: no map needed")
    if ambiguous and strict:
        shown = "; ".join(ambiguous[:SHOWN]) + (f"; and {len(ambiguous) - SHOWN} more group(s)"
                                                if len(ambiguous) > SHOWN else "")
        raise CrossattnError("cannot propose a name map: some layers cannot be paired one to one by kind and "
                             "tensor shapes (the models may not be the same architecture), and any choice would "
                             "be a guess; write those entries by hand (`crossattn map ... -o names.yaml` writes "
                             f"the rest and lists every group): {shown}")
    return NameMapProposal(mapping, notes, ambiguous)
