"""Checkpoint conversion: read, find the weights, transfer onto the target twin's slots, write, verify.

The target file appears only after everything succeeded: it is written to a
temp file beside it, verified from that temp file (read back from disk, loaded
into a fresh target twin, forward-compared in float64 with the source twin),
and renamed over the destination last.
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.atomic import atomic_write
from crossattn.compare import Comparison, compare
from crossattn.errors import CrossattnError, TransferError
from crossattn.frameworks import adapter, available
from crossattn.tolerances import Tolerance, tolerance_for
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
from weight_transfer.slots import Slot
from weight_transfer.transfer import TransferReport, transfer
from weight_transfer.values import check_values

MODES = ("train", "eval")


def other(framework: str) -> str:
    return "paddle" if framework == "torch" else "torch"


class Twins:
    """The torch and paddle twins of one model: slots for the conversion, fresh models for verification.

    Built from a spec (`from_spec`) or from any pair of factories, so a model
    without a spec converts through the same code.
    """

    def __init__(self, name: str, build: Callable[[str], Any], input_shape: tuple[int, ...] | None,
                 type_name: str | None = None) -> None:
        self.name = name
        self.type_name = type_name or name  # recorded in .safetensors metadata as "spec"
        self.build = build
        self.input_shape = input_shape
        self._slots: dict[str, dict[str, Slot]] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> "Twins":
        from crossattn import registry

        return cls(spec.name or spec.type, lambda framework: registry.build(spec, framework), spec.input_shape,
                   spec.type)

    def slots(self, framework: str) -> dict[str, Slot]:
        """The framework twin's slots; the model itself is dropped at once (it may be large)."""
        if framework not in self._slots:
            model = self.build(framework)
            self._slots[framework] = adapter(framework).slots(model)
            del model
            _return_freed_memory()
        return self._slots[framework]


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so a model built only for its
    slots does not stay resident while the checkpoint is read."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclasses.dataclass
class Verification:
    comparisons: list[Comparison]
    seconds: float
    tol: Tolerance

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        parts = "; ".join(f"{c.tensor}: max abs {c.max_abs:.3g}, norm-rel {c.norm_rel:.3g}"
                          + (f" ({c.note})" if c.note else "") for c in self.comparisons)
        return (f"{verdict}  {parts} (float64, atol {self.tol.atol:g}, rtol {self.tol.rtol:g}, "
                f"{self.seconds:.2f} s)")


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


def convert(src: str | Path, dst: str | Path, twins: Twins, to: str | None = None, source: str | None = None,
            key: str | None = None, strip_prefix: str | None = None, trust_pickle: bool = False,
            verify: bool = True, seed: int = 0, allow_nonfinite: bool = False,
            allow_lossy_cast: bool = False) -> ConvertReport:
    """Convert checkpoint `src` into `dst` for the twins' model.

    `to` and `source` name the frameworks where the formats leave them open (the
    neutral .safetensors/.npz). User mistakes raise CrossattnError subclasses;
    a failed verification returns a report with `written=False`.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    src_format, dst_format = format_of(src), format_of(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the destination is the source; write to another file")
    if verify and twins.input_shape is None:
        raise CrossattnError(f"spec {twins.name} has no `input_shape`, which verification needs; "
                             f"add one to the spec or pass --no-verify")
    for framework in _frameworks_needed(src_format, dst_format, source, to):
        twins.slots(framework)  # models are built and dropped before the checkpoint is in memory
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
        out, report.transfer = transfer(located.weights, located.framework, twins.slots(target), target,
                                        context=context)
    report.tensors = len(out)

    def write_and_verify(tmp: Path) -> None:
        write_checkpoint(tmp, dst_format, out, target, twins.type_name)
        report.bytes_written = tmp.stat().st_size
        report.seconds = time.perf_counter() - started
        if verify:
            report.verification = verify_files(twins, located, tmp, dst_format, target, seed)
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


def _refuse_other_naming(raw: Any, twins: Twins, expected: str, key: str | None, strip_prefix: str | None,
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


def verify_files(twins: Twins, located: Located, written: Path, dst_format: str, target: str,
                 seed: int = 0) -> Verification:
    """Forward both twins in float64, one with the source's weights and one with the file as written."""
    started = time.perf_counter()
    source_slots = twins.slots(located.framework)
    source_state = dict(located.weights)
    if located.framework != target:  # the transfer cast each tensor to the twin's dtype: so does the reference
        source_state = {k: _as_slot_dtype(v, source_slots.get(k)) for k, v in source_state.items()}
    for key in optional_keys(source_slots, located.framework) - set(source_state):
        source_state[key] = np.zeros(source_slots[key].shape, dtype=source_slots[key].dtype)
    reference = _outputs(twins, located.framework, source_state, seed)
    raw = read_checkpoint(written, fmt=dst_format)  # a temp name: its extension is not its format
    candidate = _outputs(twins, target, locate_weights(raw, twins.slots, [target]).weights, seed)
    tol = tolerance_for("float64")
    comparisons = [compare(f"output [{mode}]", "output", candidate[mode], reference[mode], tol) for mode in MODES]
    return Verification(comparisons, time.perf_counter() - started, tol)


def _as_slot_dtype(value: np.ndarray, slot: Any) -> np.ndarray:
    value = np.asarray(value)
    if slot is None or not np.issubdtype(value.dtype, np.floating):
        return value
    return value.astype(slot.dtype, copy=False)


def _outputs(twins: Twins, framework: str, state: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The float64 twin's output in each mode, from `state`; one twin alive at a time (they may be large)."""
    fw = adapter(framework)
    fw.setup("cpu")
    model = fw.to_dtype(twins.build(framework), "float64")
    slots = fw.slots(model)
    state64 = {k: np.asarray(v, dtype=slots[k].dtype) if k in slots else v for k, v in state.items()}
    x = np.random.default_rng([seed, 1]).standard_normal(twins.input_shape)

    def cotangent(shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, 2]).standard_normal(shape)

    outputs = {}
    for mode in MODES:
        fw.load_state(model, state64)  # afresh: a train-mode step moves the running statistics
        outputs[mode] = fw.step(model, x, cotangent, train=(mode == "train")).output
    del model, state64
    _return_freed_memory()
    return outputs


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
