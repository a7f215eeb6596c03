"""Checkpoint conversion: read, find the weights, transfer onto the target twin's slots, write, verify.

The target file appears only after everything succeeded: it is written to a
temp file beside it, verified from that temp file (read back from disk and
compared tensor by tensor with the source, then loaded into the target twin and
forward-compared with the source twin; float64 forwards on request), and
renamed over the destination last. Twins are built without storage (torch's
meta device, paddle's LazyGuard): reading their slots costs no initialisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.atomic import atomic_write
from crossattn.compare import Comparison, compare
from crossattn.errors import CrossattnError, TransferError
from crossattn.frameworks import adapter, available
from crossattn.model_pair import ModelPair, release_freed_memory
from crossattn.tolerances import FLOAT32_DIRECT, Tolerance, tolerance_for
from weight_transfer.checkpoints import (
    FRAMEWORKS,
    CheckpointError,
    Located,
    format_of,
    framework_of_format,
    locate_weights,
    metadata_framework,
    optional_keys,
    read_checkpoint,
    write_checkpoint,
)
from weight_transfer import optimizer_state
from weight_transfer.rules import counterpart_name
from weight_transfer.slots import Slot, join, with_aliases
from weight_transfer.transfer import TransferReport, map_layer_name
from weight_transfer.values import check_values

MODES = ("train", "eval")


def other(framework: str) -> str:
    return "paddle" if framework == "torch" else "torch"


@dataclasses.dataclass
class Verification:
    comparisons: list[Comparison]
    seconds: float
    tol: Tolerance
    #: "fast": the file read back tensor by tensor, plus a forward of both twins in their own dtype;
    #: "full": also the float64 forward of both twins
    level: str = "fast"

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        parts = "; ".join(f"{c.tensor}: " + (c.note if c.category == "tensors" else
                                              f"max abs {c.max_abs:.3g}, norm-rel {c.norm_rel:.3g}"
                                              + (f" ({c.note})" if c.note else ""))
                          for c in self.comparisons)
        return f"{verdict}  {parts} ({self.level}, {self.seconds:.2f} s)"


@dataclasses.dataclass
class ConvertReport:
    src: Path
    dst: Path
    src_format: str
    dst_format: str
    source_framework: str
    target_framework: str
    located: str  # where the weights were found: key and prefix
    tensors: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    transfer: TransferReport | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    verification: Verification | None = None
    written: bool = False

    @property
    def passed(self) -> bool:
        return self.written and (self.verification is None or self.verification.passed)

    def lines(self) -> list[str]:
        out = [f"convert   {self.src} -> {self.dst}",
               f"source    {self.source_framework} naming, {self.src.suffix} file, {self.located}",
               f"target    {self.target_framework} naming, {self.dst.suffix} file"]
        if self.transfer is not None:
            out.append(f"transfer  {self.transfer.summary()}")
            if self.transfer.cast:
                out.append(f"cast      {len(self.transfer.cast)}: {', '.join(self.transfer.cast)}")
        else:
            out.append(f"transfer  same framework: {self.tensors} tensors re-encoded, names and layouts kept")
        out += [f"note      {n}" for n in self.notes]
        if self.written:
            out.append(f"written   {self.tensors} tensors, {_size(self.bytes_written)}, {self.seconds:.2f} s")
        else:
            out.append(f"written   nothing: {self.dst} left {'as it was' if self.dst.exists() else 'absent'}")
        if self.verification is not None:
            out.append(f"verify    {self.verification.summary()}")
        else:
            out.append("verify    skipped (--no-verify)")
        return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class _VerificationFailed(Exception):
    """Raised inside the temp-file write so the temp file is removed and DST left alone."""

    def __init__(self, verification: Verification) -> None:
        super().__init__("verification failed")
        self.verification = verification


def convert(src: str | Path, dst: str | Path, twins: ModelPair, to: str | None = None, source: str | None = None,
            key: str | None = None, strip_prefix: str | None = None, trust_pickle: bool = False,
            verify: bool = True, seed: int = 0, full_verify: bool = False, allow_nonfinite: bool = False,
            allow_lossy_cast: bool = False) -> ConvertReport:
    """Convert checkpoint `src` into `dst` for the twins' model.

    `to` and `source` name the frameworks where the formats leave them open (the
    neutral .safetensors/.npz). User mistakes raise CrossattnError subclasses;
    a failed verification returns a report with `written=False`. `full_verify`
    adds the float64 forward of both twins to the default verification.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    src_format, dst_format = format_of(src), format_of(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the destination is the source; write to another file")
    if verify and twins.input_shape is None:
        raise CrossattnError(f"{twins.origin}: no input shape, which verification needs; add `input_shape` to "
                             f"the spec or pass --input-shape (or --no-verify)")
    for framework in _frameworks_needed(src_format, dst_format, source, to):
        twins.slots(framework)  # built without storage, before the checkpoint is in memory
    raw = read_checkpoint(src, trust_pickle)
    source_options = _source_frameworks(src_format, raw, source)
    located = locate_weights(raw, twins.slots, source_options, key, strip_prefix)
    if not located.exact and len(source_options) == 1:
        _refuse_other_naming(raw, twins, source_options[0], key, strip_prefix, source)
    target = _target_framework(dst_format, located.framework, to)
    report = ConvertReport(src, dst, src_format, dst_format, located.framework, target, located.describe())
    report.notes += _metadata_notes(raw.metadata, twins.type_name)
    report.notes.append(f"source checksum: {raw.integrity}"
                        + (" verified" if not raw.integrity.startswith("none") else ""))
    context = f"converting {src} ({located.describe()})"
    if located.exact:  # before the cast (a mismatch of keys is reported by the transfer instead)
        report.notes += check_values(located.weights, twins.slots(located.framework), str(src), allow_nonfinite,
                                     allow_lossy_cast)
    if target == located.framework:
        out = validated(located.weights, twins.slots(target), target, context, report.notes)
    else:
        out, report.transfer = twins.transfer(located.weights, located.framework, target, context=context)
    report.tensors = len(out)
    report.notes += _cumulative_bn_notes(twins, located, target)
    entries = _training_entries(raw, located, target, dst_format, twins, report.notes)

    def write_and_verify(tmp: Path) -> None:
        nonlocal raw, located, entries
        # a .pdparams file as paddle's own state dict has it: an RNN's weights under their cells' names too
        tensors = with_aliases(out, twins.slots(target)) if dst_format in ("paddle", "torch") else out
        if entries:
            optimizer_state.write_training_checkpoint(tmp, dst_format, tensors, entries)
        else:
            write_checkpoint(tmp, dst_format, tensors, target, twins.type_name)
        del tensors
        report.bytes_written = tmp.stat().st_size
        report.seconds = time.perf_counter() - started
        if verify:
            source, reread = located, _rereader(src, trust_pickle, twins, located)
            raw = located = entries = None  # the source's arrays now live only in `source`, which verification lets go
            report.verification = verify_files(twins, source, tmp, dst_format, target, seed, out, full_verify, reread)
            if not report.verification.passed:
                raise _VerificationFailed(report.verification)

    created = _missing_parents(dst)
    try:
        atomic_write(dst, write_and_verify)
    except _VerificationFailed:
        _remove_empty(created)
        return report
    except OSError as exc:
        _remove_empty(created)
        raise CheckpointError(f"{dst}: cannot write it ({exc.strerror or exc}); nothing was written") from None
    except BaseException:
        _remove_empty(created)
        raise
    report.written = True
    return report


def _cumulative_bn_notes(twins: ModelPair, located: Located, target: str) -> list[str]:
    """torch BatchNorms with momentum None average every batch so far, by their counter; paddle keeps none and
    always weighs a new batch by its momentum. Where that counter is lost or starts at 0, say so."""
    if "torch" not in (located.framework, target) or located.framework == target:
        return []
    cumulative = twins.cumulative_batch_norms()
    if not cumulative:
        return []
    shown = ", ".join(f"`{layer}`" for layer in cumulative[:3]) + (f" and {len(cumulative) - 3} more"
                                                                    if len(cumulative) > 3 else "")
    if located.framework == "torch":
        counts = {int(np.asarray(located.weights.get(f"{layer}.num_batches_tracked", 0))) for layer in cumulative}
        return [f"torch BatchNorm {shown} (momentum None) averages its running statistics over all {max(counts)} "
                f"batches so far; paddle's BatchNorm weighs each new batch by its momentum and keeps no counter, so "
                f"training on in paddle, or converting back, does not continue that average"]
    return [f"torch BatchNorm {shown} (momentum None) averages its running statistics cumulatively, and its "
            f"counter starts at 0 here (paddle keeps none): its first train-mode batch replaces the statistics"]


def _training_entries(raw: Any, located: Located, target: str, dst_format: str, twins: ModelPair,
                      notes: list[str]) -> dict[str, Any]:
    """A training checkpoint's optimizer state, epoch and step, carried into a framework format."""
    if not isinstance(raw.content, Mapping):
        return {}
    left = [str(k) for k in raw.content if k != located.key]
    shown = ", ".join(f"`{k}`" for k in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    if located.key != "model" and located.key in raw.content:
        if left:
            notes.append(f"only the weights under `{located.key}` are written; the file's other entries ({shown}) "
                         f"are not: an optimizer state is translated from crossattn's training checkpoints (weights "
                         f"under `model`, with `optimizer_config`), whose names and settings it knows")
        return {}
    if located.key != "model" or "optimizer" not in raw.content:
        return {}
    unrecorded = [k for k in (optimizer_state.HYPER_KEY, optimizer_state.NAMES_KEY) if k not in raw.content]
    if unrecorded:
        notes.append(f"only the weights under `model` are written; the file's other entries ({shown}) are not: it "
                     f"has no `{unrecorded[0]}` record (it was not written by crossattn's training loop), so which "
                     f"parameter each optimizer moment belongs to and the settings it was made with cannot be told "
                     f"for the other framework")
        return {}
    if dst_format not in FRAMEWORKS or located.framework == target:
        notes.append(f"the source's optimizer state is not written: {dst_format} holds the weights only"
                     if dst_format not in FRAMEWORKS else "the source's optimizer state is not copied "
                     "(same framework; convert to the other one to translate it)")
        return {}
    return optimizer_state.training_entries(raw.content, located.framework, target, twins, str(raw.path), notes)


def _frameworks_needed(src_format: str, dst_format: str, source: str | None, to: str | None) -> list[str]:
    """The frameworks whose slots the conversion may consult, known before reading anything."""
    src_fw = framework_of_format(src_format) or source
    dst_fw = framework_of_format(dst_format) or to or (other(src_fw) if src_fw else None)
    if src_fw is None or dst_fw is None:
        return [fw for fw in FRAMEWORKS if available(fw)]
    return list(dict.fromkeys([src_fw, dst_fw]))


def _source_frameworks(src_format: str, raw: Any, source: str | None) -> list[str]:
    """Which naming the source may follow: fixed by the format or metadata, else both are tried."""
    implied = framework_of_format(src_format) or metadata_framework(raw)
    if source is not None and implied is not None and source != implied:
        how = "its extension" if framework_of_format(src_format) else "its metadata"
        raise CrossattnError(f"{raw.path}: --from {source} contradicts {how}, which says {implied}")
    chosen = source or implied
    if chosen is not None:
        return [chosen]
    return [fw for fw in FRAMEWORKS if available(fw)] or list(FRAMEWORKS)


def _refuse_other_naming(raw: Any, twins: ModelPair, expected: str, key: str | None, strip_prefix: str | None,
                         source: str | None) -> None:
    """A clearer error than a list of every key when the file simply holds the other framework's naming."""
    actual = other(expected)
    if not available(actual):
        return
    if locate_weights(raw, twins.slots, [actual], key, strip_prefix).exact:
        how = "--from" if source else ("its extension" if framework_of_format(format_of(raw.path)) else "its metadata")
        raise CheckpointError(f"{raw.path}: the tensors follow {actual} naming, but {how} says {expected}; "
                              f"store {actual} checkpoints as {'.pdparams' if actual == 'paddle' else '.pt'}, "
                              f".safetensors or .npz")


def _target_framework(dst_format: str, source_framework: str, to: str | None) -> str:
    implied = framework_of_format(dst_format)
    if to is not None and implied is not None and to != implied:
        raise CrossattnError(f"--to {to} contradicts the destination's extension ({dst_format} files hold "
                             f"{implied} checkpoints); use .safetensors or .npz for a free choice")
    return implied or to or other(source_framework)


def _metadata_notes(metadata: Mapping[str, str], name: str) -> list[str]:
    written_for = metadata.get("spec")
    if written_for and written_for != name:
        return [f"the source file was written for spec type `{written_for}`; converting for `{name}`"]
    return []


def validated(weights: Mapping[str, np.ndarray], slots: Mapping[str, Slot], framework: str, context: str,
              notes: list[str]) -> dict[str, np.ndarray]:
    """Same-framework check: every slot present with its shape, nothing extra; optional slots filled."""
    problems = []
    optional = optional_keys(slots, framework)
    out: dict[str, np.ndarray] = {}
    for key, slot in slots.items():
        if key not in weights:
            if key in optional:
                out[key] = np.zeros(slot.shape, dtype=slot.dtype)
                notes.append(f"`{key}` absent from the source; filled with 0")
            else:
                problems.append(f"missing `{key}` ({framework} shape {list(slot.shape)})")
            continue
        value = weights[key]
        if tuple(value.shape) != slot.shape:
            problems.append(f"mis-shaped `{key}`: {framework} shape {list(value.shape)}, "
                            f"the model expects {list(slot.shape)}")
            continue
        out[key] = value
    problems += [f"unexpected `{k}` (shape {list(np.shape(v))}): no {framework} tensor takes it"
                 for k, v in weights.items() if k not in slots]
    if problems:
        raise TransferError(problems, context)
    return out


# --------------------------------------------------------------------------- verification


def verify_files(twins: ModelPair, located: Located, written: Path, dst_format: str, target: str,
                 seed: int = 0, expected: dict[str, np.ndarray] | None = None,
                 full: bool = False, reread: Callable[[], Mapping[str, np.ndarray]] | None = None) -> Verification:
    """Read the written file back and prove it holds the source's weights, then run both twins on it.

    1. Every tensor as read back, mapped back through the transfer rules (and
       the pair's name map), equals bit for bit the source tensor (cast to the
       twin's dtype, as the transfer casts): compared by SHA-256 digests of
       dtype, shape and bytes, so the source's arrays are let go before the
       file is read and the two are never resident together; `reread` gives
       the source again only to say by how much a tensor that differs differs.
       Tensors the target fills equal what was written (`expected`, which is
       emptied: the caller has written it).
    2. Both twins, one with the source's weights and one with the file as
       read back, run forward in eval mode (every weight and running
       statistic in use) on the pair's input in the twins' own dtype; their
       outputs must agree within that dtype's tolerance. The source's forward
       runs before the file is read back, the arrays handed over to the model
       as it is filled: one checkpoint's worth of arrays is alive at a time.
       Train mode is left to the float64 forward: in float32 a train-mode
       BatchNorm over a few values per channel amplifies rounding past any
       tight bound, and it uses no weight that eval mode does not.
    3. With `full`, both modes again in float64 (tolerance of float64).

    `located.weights` is emptied: the caller holds no other reference to the
    source's arrays, so their memory goes back before the file is read.
    """
    started = time.perf_counter()
    source_fw = located.framework
    source_slots = twins.slots(source_fw)
    source_state = dict(located.weights)
    located.weights.clear()
    if source_fw != target:  # the transfer cast each tensor to the twin's dtype: so does the reference
        source_state = {k: _as_slot_dtype(v, source_slots.get(k)) for k, v in source_state.items()}
    for key in optional_keys(source_slots, source_fw) - set(source_state):
        source_state[key] = np.zeros(source_slots[key].shape, dtype=source_slots[key].dtype)
    # what was written is checked through the source; keep only what has no source tensor (filled values),
    # so the transposed copies made for writing are gone before the file is read back
    written_keys = set(expected) if expected is not None else None
    file_keys = _file_keys(twins, source_slots, source_state, source_fw, target)
    mapped = set(file_keys.values())
    filled = {k: v for k, v in (expected or {}).items() if k not in mapped}
    if expected is not None:
        expected.clear()
    digests = {key: _digest(source_state[key]) for key in file_keys}
    dtype = _float_dtype(twins.slots(target))
    tol = tolerance_for(dtype) if dtype == "float64" else FLOAT32_DIRECT  # no float64 runs here
    x = np.random.default_rng([seed, 1]).standard_normal(twins.input_shape).astype(dtype)
    reference64 = _outputs(twins, source_fw, source_state, seed) if full else None
    reference = _lazy_output(twins, source_fw, source_state, x)  # consumes source_state: the source is let go
    del source_state
    release_freed_memory()
    raw = read_checkpoint(written, fmt=dst_format)  # a temp name: its extension is not its format
    read_back = dict(locate_weights(raw, twins.slots, [target]).weights)
    del raw
    comparisons = [_tensors_as_written(twins, read_back, written_keys, filled, digests, file_keys, source_fw,
                                       source_slots, target, reread)]
    state64 = dict(read_back) if full else None
    candidate = _lazy_output(twins, target, read_back, x)  # consumes read_back
    del read_back
    comparisons.append(compare(f"output [eval, {dtype}]", "output", candidate, reference, tol))
    if full:
        tol64 = tolerance_for("float64")
        candidate = _outputs(twins, target, state64, seed)
        del state64
        comparisons += [compare(f"output [{mode}, float64]", "output", candidate[mode], reference64[mode], tol64)
                        for mode in MODES]
    return Verification(comparisons, time.perf_counter() - started, tol, "full" if full else "fast")


def _digest(value: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """What bit-for-bit equality compares: dtype, shape and the SHA-256 of the bytes in C order."""
    value = np.asarray(value)
    data = np.ascontiguousarray(value).reshape(-1).view(np.uint8) if value.size else b""
    return value.dtype.str, value.shape, hashlib.sha256(data).digest()


def _rereader(src: Path, trust_pickle: bool, twins: ModelPair, located: Located
              ) -> Callable[[], Mapping[str, np.ndarray]]:
    """The source's weights read again, as they were found (for the size of a difference only)."""
    framework, key, prefix = located.framework, located.key, located.prefix

    def reread() -> Mapping[str, np.ndarray]:
        return locate_weights(read_checkpoint(src, trust_pickle), twins.slots, [framework], key, prefix).weights

    return reread


def _file_keys(twins: ModelPair, source_slots: Mapping[str, Slot], source_state: Mapping[str, np.ndarray],
               source_fw: str, target: str) -> dict[str, str]:
    """Source key -> the key its tensor has in the written file (through the rules and the name map)."""
    if source_fw == target:
        return {key: key for key in source_slots if key in source_state}
    layer_map = twins.layer_map(source_fw, target)
    keys = {}
    for key, slot in source_slots.items():
        if key not in source_state:
            continue
        name, _ = counterpart_name(slot.kind, slot.name, source_fw)
        if name is not None:
            keys[key] = join(map_layer_name(slot.layer, layer_map), name)
    return keys


def _tensors_as_written(twins: ModelPair, read_back: Mapping[str, np.ndarray], written_keys: set[str] | None,
                        filled: Mapping[str, np.ndarray], digests: Mapping[str, tuple], file_keys: Mapping[str, str],
                        source_fw: str, source_slots: Mapping[str, Slot], target: str,
                        reread: Callable[[], Mapping[str, np.ndarray]] | None = None) -> Comparison:
    """Bit-for-bit, tensor by tensor (no second copy of the checkpoint): every tensor of the file mapped
    back through the transfer rules against the source tensor's digest, the tensors the target fills
    against the values given, and the file's keys against those written."""
    problems: list[tuple[str, float]] = []
    if written_keys is not None:
        problems += [(f"`{k}` not in the file", math.inf) for k in sorted(written_keys) if k not in read_back]
        problems += [(f"unexpected `{k}` in the file", math.inf) for k in read_back if k not in written_keys]
    for key, value in filled.items():
        if key in read_back and not _same(read_back[key], value):
            problems.append((f"`{key}` differs from what was written", _max_abs(read_back[key], value)))
    differing: dict[str, np.ndarray] = {}
    for key, file_key in file_keys.items():
        if file_key not in read_back:
            continue  # reported above
        if source_fw == target:
            back = {key: read_back[file_key]}
        else:
            back, _ = twins.transfer({file_key: read_back[file_key]}, target, source_fw, {key: source_slots[key]},
                                     complete=False)
        if key in back and _digest(back[key]) != digests[key]:
            differing[key] = back[key]
    if differing:
        source = reread() if reread is not None else {}
        for key, value in differing.items():
            original = _as_slot_dtype(source[key], source_slots.get(key)) if key in source else None
            problems.append((f"`{key}` differs from the source",
                             _max_abs(value, original) if original is not None else math.inf))
    checked = len(read_back)
    if not problems:
        note = f"{checked} tensors read back, bit-identical to the source (SHA-256, tensor by tensor)"
        return Comparison("tensors", "tensors", 0.0, 0.0, 1.0, True, note, 0.0, 0.0)
    worst = max(error for _, error in problems)
    listed = "; ".join(what for what, _ in problems[:5]) + (f"; {len(problems) - 5} more" if len(problems) > 5 else "")
    note = f"{len(problems)} of {checked} tensors wrong: {listed}"
    return Comparison("tensors", "tensors", worst, math.inf, math.nan, False, note, 0.0, 0.0)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _float_dtype(slots: Mapping[str, Slot]) -> str:
    """The twins' working precision: that of their floating tensors (float32 unless built otherwise)."""
    kinds = {s.dtype for s in slots.values() if s.dtype in ("float16", "bfloat16", "float32", "float64")}
    return "float64" if kinds == {"float64"} else "float32"


def _lazy_output(twins: ModelPair, framework: str, state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The twin's eval-mode output with `state` as its storage; `state` is consumed (emptied)."""
    fw = adapter(framework)
    fw.setup("cpu")
    model = twins.build_lazy(framework)
    try:
        fw.load_lazy(model, state, consume=True)
    except CrossattnError:  # a tensor without a value after a lazy build (a non-persistent buffer): build it
        model = twins.build(framework)
        fw.load_state(model, state)
    state.clear()
    with fw.threads(1):
        output = fw.forward(model, x, train=False)
    del model
    release_freed_memory()
    return output


def _as_slot_dtype(value: np.ndarray, slot: Any) -> np.ndarray:
    value = np.asarray(value)
    floating_slot = slot is not None and np.issubdtype(np.dtype(slot.dtype), np.floating)
    if floating_slot and (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
        return value.astype(slot.dtype)  # an integer tensor the transfer cast for a float slot: so the reference
    if slot is None or not np.issubdtype(value.dtype, np.inexact):
        return value
    if np.iscomplexobj(value):  # only reached with --allow-lossy-cast: the transfer kept the real part too
        value = value.real
    return value.astype(slot.dtype, copy=False)


def _outputs(twins: ModelPair, framework: str, state: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The float64 twin's output in each mode, from `state`; one twin alive at a time (they may be large)."""
    fw = adapter(framework)
    fw.setup("cpu")
    model = fw.to_dtype(twins.build(framework), "float64")
    slots = fw.slots(model)
    state64 = {k: np.asarray(v, dtype=slots[k].dtype) if k in slots else v for k, v in state.items()}
    x = np.random.default_rng([seed, 1]).standard_normal(twins.input_shape)
    fw.load_state(model, state64)
    del state64
    with fw.threads(1):
        outputs = {mode: fw.forward(model, x, train=(mode == "train")) for mode in ("eval", "train")}
    del model
    release_freed_memory()
    return {mode: outputs[mode] for mode in MODES}


# --------------------------------------------------------------------------- helpers


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return
