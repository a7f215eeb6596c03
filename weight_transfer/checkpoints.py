"""Checkpoint files: format by extension, safe reading, plain writing, finding the weights inside.

Formats and the framework convention their content follows:

    .pt / .pth      torch (torch.load with weights_only=True, memory-mapped where the file allows)
    .pdparams       paddle (a pickled dict of numpy arrays, read by an unpickler that can build
                    numpy arrays and nothing else)
    .safetensors    neutral; the convention comes from the metadata or from the key set
    .npz            neutral; the convention comes from the key set

Reading a pickle can run arbitrary code, so pickled formats are read with the
restricted loaders above; a file that needs anything more is refused unless the
caller trusts it (`trust_pickle=True`, then torch.load / paddle.load in full).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.errors import CrossattnError
from weight_transfer.integrity import (
    METADATA_KEY,
    HashingWriter,
    recorded_digest,
    seal_pickle,
    tensors_digest,
    verify_file,
    verify_tensors,
)
from weight_transfer.rules import RULES
from weight_transfer.slots import Slot, fold_aliases

#: extension -> format name; a format name is also the framework for pickled formats
EXTENSIONS = {".pt": "torch", ".pth": "torch", ".pdparams": "paddle", ".safetensors": "safetensors", ".npz": "npz"}
NEUTRAL_FORMATS = ("safetensors", "npz")
FRAMEWORKS = ("torch", "paddle")
#: prefixes a wrapper adds to every key: DataParallel/DDP, Lightning-style `model.`, torch.compile
KNOWN_PREFIXES = ("module.", "model.", "_orig_mod.")
#: keys a training checkpoint keeps its weights under, in order of preference when several match
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params",
               "model_state", "module", "ema", "model_ema")
#: bookkeeping entries paddle.save adds beside the arrays
PADDLE_NAME_TABLE = "StructuredToParameterName@@"
PADDLE_SLICES = "UnpackBigParamInfor@@"
#: numpy dtype kinds a tensor may have: bool, signed, unsigned, float, complex
TENSOR_KINDS = "biufc"
#: the zip comment of an .npz crossattn writes: this prefix, then the tensors' SHA-256
NPZ_COMMENT = "crossattn-sha256:"


class CheckpointError(CrossattnError):
    """A checkpoint file that cannot be read, found in, or written as asked."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that needs more than plain arrays to load; refused unless trusted."""


@dataclasses.dataclass
class RawCheckpoint:
    """What a file holds before the weights are found in it."""

    path: Path
    format: str  # torch | paddle | safetensors | npz
    content: Any  # a mapping of tensors, or a training checkpoint holding one
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    #: how the file's own checksum was verified ("zip CRC-32", "SHA-256", or "none (...)")
    integrity: str = ""


@dataclasses.dataclass
class Located:
    """The weights found in a checkpoint, with how they were found."""

    weights: dict[str, np.ndarray]
    framework: str
    key: str | None  # the checkpoint entry holding them (None: the file's top level)
    prefix: str | None  # the prefix stripped from every key (None: none)
    exact: bool = True  # False: nothing matched the model; these are the closest, for error messages

    def describe(self) -> str:
        where = f"weights under key `{self.key}`" if self.key else "weights at the top level"
        return where + (f", prefix `{self.prefix}` stripped" if self.prefix else ", no prefix")


# --------------------------------------------------------------------------- formats


def format_of(path: str | os.PathLike) -> str:
    """The format named by a file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(EXTENSIONS)
        raise CheckpointError(f"{path}: unknown checkpoint extension {suffix or '(none)'!r}; known: {known}")
    return EXTENSIONS[suffix]


def framework_of_format(fmt: str) -> str | None:
    """The framework a format implies (None for the neutral formats)."""
    return None if fmt in NEUTRAL_FORMATS else fmt


# --------------------------------------------------------------------------- reading


def _refuse_other_format(path: Path, fmt: str) -> None:
    """A whole file of another format under this extension (a torch zip named .pdparams, a paddle pickle named
    .pt) is named as such: read as the extension says, it looked damaged or unsafe."""
    with open(path, "rb") as f:
        head = f.read(4)
    held = None
    if fmt != "torch" and fmt != "npz" and head == b"PK\x03\x04" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("data.pkl") for n in names):
            held = ("a torch checkpoint (the zip archive torch.save writes)", ".pt")
        elif names and all(n.endswith(".npy") for n in names):
            held = ("a numpy .npz archive", ".npz")
    elif fmt == "torch" and len(head) >= 2 and head[0] == 0x80 and head[1] >= 3:  # torch's legacy files: protocol 2
        held = ("a plain pickle of protocol 3 or more, as paddle.save writes (torch writes a zip archive)",
                ".pdparams")
    if held is not None:
        raise CheckpointError(f"{path}: named {path.suffix} but holds {held[0]}; rename it to {held[1]} (the "
                              f"extension decides how it is read)")


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False, fmt: str | None = None) -> RawCheckpoint:
    """Read any supported checkpoint; pickles beyond plain arrays need `trust_pickle`.

    `fmt` overrides the extension (a file written under a temp name).
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    if not path.is_file():
        if path.exists():  # a named pipe or a device is never opened: reading it could hang
            raise CheckpointError(f"{path}: not a regular file (a folder, named pipe or device); pass a checkpoint file")
        raise CheckpointError(f"{path}: no such file")
    _refuse_other_format(path, fmt)
    integrity = verify_file(path, fmt)  # damage is found before any byte is unpickled or converted
    readers: dict[str, Callable[[Path, bool], RawCheckpoint]] = {
        "torch": _read_torch, "paddle": _read_paddle, "safetensors": _read_safetensors, "npz": _read_npz}
    raw = readers[fmt](path, trust_pickle)
    if fmt in ("safetensors", "npz"):
        if verify_tensors(path, raw.content, recorded_digest(raw.metadata)):
            integrity = f"{integrity} and SHA-256" if fmt == "npz" else "SHA-256"  # safetensors: deferred to here
        elif fmt == "safetensors":
            integrity = "none (no crossattn checksum)"
    raw.integrity = integrity
    return raw


def _read_torch(path: Path, trust_pickle: bool) -> RawCheckpoint:
    from crossattn.frameworks import require

    torch = require("torch")
    try:
        content = _torch_load(torch, path, weights_only=True)
    except pickle.UnpicklingError as exc:
        damage = _not_a_pickle(path)
        if damage is not None:  # random bytes are not "more than tensors": say what the file is
            raise CheckpointError(f"{path}: not a torch checkpoint: neither a zip archive (torch.save's format) nor "
                                  f"a whole pickle ({damage}); it is damaged, cut short or another kind of "
                                  f"file") from None
        if not trust_pickle:
            needed = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            first = (f"it needs `{needed.group(1)}`" if needed else reason.group(1).strip() if reason else
                     str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise UnsafeCheckpointError(
                f"{path}: refused: the file needs more than tensors and plain containers to load "
                f"(torch.load(weights_only=True) said: {first}). Loading it could run code stored in the "
                f"file; pass --trust-pickle only if you trust where it came from") from None
        try:
            content = _torch_load(torch, path, weights_only=False)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if isinstance(content, torch.nn.Module):  # a whole pickled model (only with trust_pickle)
        content = content.state_dict()
    return RawCheckpoint(path, "torch", content)


def _not_a_pickle(path: Path) -> str | None:
    """Why a file that is no zip archive is not a pickle stream either (None: it is one, or a zip).

    torch's legacy format is a sequence of pickles, the first a magic number;
    its opcodes are read here, none executed, so damage is told apart from a
    well-formed pickle that needs code to load.
    """
    import pickletools

    if zipfile.is_zipfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            for _ in pickletools.genops(fh):
                pass
    except Exception as exc:  # noqa: BLE001 - unknown opcodes, truncation: all mean the same here
        return f"{type(exc).__name__}: {exc}"
    return None


def _torch_load(torch: Any, path: Path, weights_only: bool) -> Any:
    """torch.load memory-mapped (zip files), else plainly (legacy files)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except pickle.UnpicklingError:
        raise
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many types
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Exactly the globals paddle.save (protocol 4) writes for a dict of tensors: numpy's
# array-rebuild hook, the ndarray type and dtype (numpy 1.x files spell the hook's
# module numpy.core); a training checkpoint (weights beside optimizer state) adds
# two plain containers, OrderedDict and tuple, whose construction runs no code.
# Resolved here, never imported by name from the file.
_PADDLE_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,
}


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds containers of numpy arrays; any other global is refused before it is looked up."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")  # what paddle.load uses, for python-2 era files
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PADDLE_ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refused: the pickle refers to `{module}.{name}`; a paddle state dict "
                f"needs only numpy arrays. Loading it could run code stored in the file; pass "
                f"--trust-pickle only if you trust where it came from") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self._source}: refused: the pickle uses persistent ids, "
                                    f"which a paddle state dict never does")


def _unwrap_nested_tensors(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """paddle.save stores a tensor nested in a larger dict (a training checkpoint) as (name, array).

    Each dict is rebuilt once however often the pickle refers to it (`memo`, by identity): a file of a few hundred
    bytes can refer to one dict from two keys at every level, 2^depth visits without it, and to itself.
    """
    memo = {} if memo is None else memo
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray):
        return value[1]
    if isinstance(value, dict):
        if id(value) in memo:
            if memo[id(value)] is None:  # reached again inside itself
                raise RecursionError("a dict that holds itself")
            return memo[id(value)]
        memo[id(value)] = None
        memo[id(value)] = {k: _unwrap_nested_tensors(v, memo) for k, v in value.items()}
        return memo[id(value)]
    return value


def _read_paddle(path: Path, trust_pickle: bool) -> RawCheckpoint:
    try:
        with open(path, "rb") as fh:
            content = ArrayOnlyUnpickler(fh, str(path)).load()
    except UnsafeCheckpointError:
        if not trust_pickle:
            raise
        from crossattn.frameworks import require

        paddle = require("paddle")
        try:
            content = paddle.load(str(path), return_numpy=True)
        except Exception as exc:  # noqa: BLE001 - paddle raises many types
            raise CheckpointError(f"{path}: paddle.load failed ({type(exc).__name__}: {exc})") from None
    except CrossattnError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise many types
        raise CheckpointError(f"{path}: not a readable .pdparams pickle ({type(exc).__name__}: {exc})") from None
    try:
        return RawCheckpoint(path, "paddle", _paddle_bookkeeping_removed(_unwrap_nested_tensors(content)))
    except RecursionError:
        raise CheckpointError(f"{path}: the pickle refers to itself (or nests too deep) and holds no state dict") \
            from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed {PADDLE_SLICES} entry ({type(exc).__name__}: {exc})") from None


def _paddle_bookkeeping_removed(content: Any, memo: dict[int, Any] | None = None) -> Any:
    """Drop paddle.save's parameter-name table; join arrays it split for old pickle protocols (each dict once,
    by identity, as in `_unwrap_nested_tensors`)."""
    if not isinstance(content, dict):
        return content
    memo = {} if memo is None else memo
    if id(content) in memo:
        if memo[id(content)] is None:
            raise RecursionError("a dict that holds itself")
        return memo[id(content)]
    key = id(content)
    memo[key] = None
    content = dict(content)
    content.pop(PADDLE_NAME_TABLE, None)
    slices = content.pop(PADDLE_SLICES, None)
    if isinstance(slices, dict):
        for key, info in slices.items():
            parts = [content.pop(part) for part in info["slices"]]
            content[key] = np.concatenate(parts).reshape(info["OriginShape"])
    memo[key] = {k: _paddle_bookkeeping_removed(v, memo) for k, v in content.items()}
    return memo[key]


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _read_safetensors(path: Path, trust_pickle: bool) -> RawCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = dict(fh.metadata() or {})
            content = {key: fh.get_tensor(key) for key in fh.keys()}
    except TypeError as exc:  # a dtype numpy lacks (bfloat16): read through torch, which upcasts exactly
        if "bfloat16" not in str(exc) or "torch" not in sys.modules and not _torch_installed():
            raise CheckpointError(f"{path}: holds a dtype numpy cannot represent ({exc}); install torch to read "
                                  f"bfloat16 tensors (they are upcast to float32 exactly)") from None
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            content = {key: to_numpy(fh.get_tensor(key), key, str(path)) for key in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return RawCheckpoint(path, "safetensors", content, metadata)


def _read_npz(path: Path, trust_pickle: bool) -> RawCheckpoint:
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise CheckpointError(f"{path}: not an .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            content = {key: archive[key] for key in archive.files}
        with zipfile.ZipFile(path) as archive:
            comment = archive.comment.decode("ascii", "replace")
    except ValueError as exc:
        raise UnsafeCheckpointError(f"{path}: refused: {exc} (an .npz checkpoint holds numeric arrays only)") from None
    except Exception as exc:  # noqa: BLE001 - zip and npy errors
        raise CheckpointError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    # the comment is crossattn's digest when it has its length (a damaged prefix still counts as one)
    metadata = {METADATA_KEY: comment[len(NPZ_COMMENT):]} if len(comment) == len(NPZ_COMMENT) + 64 else {}
    return RawCheckpoint(path, "npz", content, metadata)


def metadata_framework(raw: RawCheckpoint) -> str | None:
    """The framework convention a neutral file declares, if it declares one."""
    declared = raw.metadata.get("framework")
    # only crossattn's own entry binds: `format: pt`, which torch-side safetensors writers record,
    # says how the file was written, not whose naming the keys follow (the keys tell that)
    return declared if declared in FRAMEWORKS else None


# --------------------------------------------------------------------------- tensors


def is_tensor(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: Any, key: str, source: str) -> np.ndarray:
    """A numpy view of a tensor (no copy where the framework allows); numeric dtypes only."""
    if not isinstance(value, np.ndarray):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            if value.is_meta:
                raise CheckpointError(f"{source}: tensor `{key}` is on torch's meta device: it has a shape and no "
                                      f"values (saved from a model built without storage); save the trained "
                                      f"model's state instead")
            if value.layout != torch.strided:
                raise CheckpointError(f"{source}: tensor `{key}` is a {str(value.layout).removeprefix('torch.')} "
                                      f"tensor; save it dense (`.to_dense()`) first")
            if value.is_conj() or value.is_neg():
                value = value.resolve_conj().resolve_neg()  # a lazily conjugated or negated view: its values
            if value.dtype == torch.bfloat16:
                value = value.float()  # numpy has no bfloat16; every bfloat16 value is exact in float32
        try:
            value = value.detach().cpu().numpy()
        except TypeError as exc:  # float8 has no numpy dtype
            raise CheckpointError(f"{source}: tensor `{key}` has dtype {value.dtype}, which numpy cannot hold "
                                  f"({exc}); cast the checkpoint to float32 first") from None
        except RuntimeError as exc:  # a tensor numpy cannot view in any other way
            raise CheckpointError(f"{source}: tensor `{key}` cannot be read as an array ({exc})") from None
    if value.dtype.kind not in TENSOR_KINDS:
        raise CheckpointError(f"{source}: `{key}` holds a {value.dtype} array, not numbers")
    return value


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


# --------------------------------------------------------------------------- finding the weights


def _is_tensor_mapping(value: Any) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) for k in value) and all(is_tensor(v) for v in value.values()))


def _sub_mappings(content: Any, depth: int = 2) -> list[tuple[str | None, Mapping]]:
    """Every mapping of tensors in the checkpoint, with its key path ("a.b"; None for the top level)."""
    found: list[tuple[str | None, Mapping]] = []
    if _is_tensor_mapping(content):
        found.append((None, content))

    def walk(node: Any, path: str, left: int) -> None:
        if not isinstance(node, Mapping) or left == 0:
            return
        for key, value in node.items():
            if not isinstance(key, str):
                continue
            here = f"{path}.{key}" if path else key
            if _is_tensor_mapping(value):
                found.append((here, value))
            else:
                walk(value, here, left - 1)

    if not _is_tensor_mapping(content):
        walk(content, "", depth)
    return found


def _resolve_key(content: Any, key: str, source: str) -> Mapping:
    if isinstance(content, Mapping) and key in content:
        node = content[key]
    else:
        node = content
        for part in key.split("."):
            if not (isinstance(node, Mapping) and part in node):
                top = ", ".join(f"`{k}`" for k in content) if isinstance(content, Mapping) else "(not a mapping)"
                raise CheckpointError(f"{source}: no entry `{key}`; the top-level keys are: {top}")
            node = node[part]
    if not _is_tensor_mapping(node):
        raise CheckpointError(f"{source}: entry `{key}` is not a mapping of names to tensors "
                              f"(it holds a {type(node).__name__})")
    return node


def _prefix_chain(keys: Iterable[str]) -> list[str]:
    """Known wrapper prefixes every key carries, stacked: "", "module.", "module.model." ..."""
    keys = list(keys)
    chain, prefix = [""], ""
    while True:
        for candidate in KNOWN_PREFIXES:
            if all(k.startswith(prefix + candidate) for k in keys):
                prefix += candidate
                chain.append(prefix)
                break
        else:
            return chain


def _strip(mapping: Mapping, prefix: str) -> dict[str, Any]:
    """Keys with `prefix` removed where they carry it (an explicit --strip-prefix need not be on every key)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in mapping.items()}


def optional_keys(slots: Mapping[str, Slot], framework: str) -> set[str]:
    """Slots a checkpoint may lack: tensors the other framework has no twin of (num_batches_tracked)."""
    optional = set()
    for key, slot in slots.items():
        for rule in RULES:
            own = rule.torch_name if framework == "torch" else rule.paddle_name
            other = rule.paddle_name if framework == "torch" else rule.torch_name
            if rule.kind == slot.kind and own == slot.name and other is None:
                optional.add(key)
    return optional


def _shapes(slots: Mapping[str, Slot]) -> dict[str, tuple[int, ...]]:
    """Each key a model's state may hold, with its shape: the slots, and the aliases of a slot's tensor."""
    shapes = {key: slot.shape for key, slot in slots.items()}
    shapes.update({alias: slot.shape for slot in slots.values() for alias in slot.aliases})
    return shapes


def matches(mapping: Mapping[str, Any], slots: Mapping[str, Slot], framework: str) -> bool:
    """Every key a slot (or an alias of one) with the slot's shape, every non-optional slot present."""
    shapes = _shapes(slots)
    if any(shapes.get(k) != _shape(v) for k, v in mapping.items()):
        return False
    return all(k in mapping for k in set(slots) - optional_keys(slots, framework))


def _overlap(mapping: Mapping[str, Any], slots: Mapping[str, Slot]) -> tuple[int, int]:
    shapes = _shapes(slots)
    names = sum(k in shapes for k in mapping)
    shapes_ = sum(shapes.get(k) == _shape(v) for k, v in mapping.items())
    return names, shapes_


def locate_weights(raw: RawCheckpoint, slots_for: Callable[[str], Mapping[str, Slot]],
                   frameworks: Iterable[str], key: str | None = None,
                   strip_prefix: str | None = None) -> Located:
    """Find the model's weights in `raw`: which entry, which prefix, which framework's naming.

    A prefix is stripped automatically only when every key carries it and the
    stripped keys are exactly the model's slots. When nothing matches exactly,
    the closest candidate is returned (`Located.exact` says so) so that
    validation names every missing, unexpected or mis-shaped key.
    """
    source = str(raw.path)
    frameworks = list(frameworks)
    if key is not None:
        mappings = [(key, _resolve_key(raw.content, key, source))]
    else:
        mappings = _sub_mappings(raw.content)
        if not mappings:
            top = (", ".join(f"`{k}`" for k in list(raw.content)[:20]) if isinstance(raw.content, Mapping)
                   else f"a {type(raw.content).__name__}")
            raise CheckpointError(f"{source}: found no mapping of names to tensors (top level: {top})")
    candidates: list[tuple[str | None, str, Mapping]] = []
    for where, mapping in mappings:
        if strip_prefix is not None:
            if any(k.startswith(strip_prefix) for k in mapping):
                stripped = [k[len(strip_prefix):] if k.startswith(strip_prefix) else k for k in mapping]
                clash = next((k for k in stripped if stripped.count(k) > 1), None)
                if clash is not None:
                    raise CheckpointError(f"{source}: --strip-prefix {strip_prefix!r} would give two tensors "
                                          f"the name `{clash}`")
                candidates.append((where, strip_prefix, mapping))
        else:
            candidates += [(where, prefix, mapping) for prefix in _prefix_chain(mapping)]
    if not candidates:
        example = next((k for _, m in mappings for k in m), "")
        raise CheckpointError(f"{source}: --strip-prefix {strip_prefix!r}: no key starts with it (e.g. `{example}`)")
    exact = [(where, prefix, mapping, fw) for where, prefix, mapping in candidates for fw in frameworks
             if matches(_strip(mapping, prefix), slots_for(fw), fw)]
    if exact:
        where, prefix, mapping, fw = _choose(exact, slots_for, source)
        return _located(raw, mapping, fw, where, prefix, exact=True, slots=slots_for(fw))
    scored = [((_overlap(_strip(m, p), slots_for(fw)), -len(p)), where, p, m, fw)
              for where, p, m in candidates for fw in frameworks]
    _, where, prefix, mapping, fw = max(scored, key=lambda item: item[0])
    return _located(raw, mapping, fw, where, prefix, exact=False, slots=slots_for(fw))


def _preference(where: str | None) -> int:
    """Rank of a checkpoint entry as the home of the weights: lower is likelier."""
    name = (where or "").rpartition(".")[2]
    return WEIGHT_KEYS.index(name) if name in WEIGHT_KEYS else len(WEIGHT_KEYS)


def _choose(exact: list[tuple[str | None, str, Mapping, str]], slots_for: Callable[[str], Mapping[str, Slot]],
            source: str) -> tuple[str | None, str, Mapping, str]:
    """One (entry, prefix, framework) among exact matches, or a message asking the user to pick."""
    places = sorted(dict.fromkeys((where, prefix) for where, prefix, _, _ in exact),
                    key=lambda place: _preference(place[0]))
    if len(places) > 1:
        best, second = _preference(places[0][0]), _preference(places[1][0])
        if best == len(WEIGHT_KEYS) or best == second:
            names = ", ".join(f"`{where}`" for where, _ in places)
            raise CheckpointError(f"{source}: several entries hold the model's weights ({names}); "
                                  f"pick one with --key")
        exact = [e for e in exact if (e[0], e[1]) == places[0]]
    if len(exact) == 2:  # both namings fit: no BatchNorm, and Linear weights (if any) square
        if not _transposes(slots_for("paddle")):
            return next(e for e in exact if e[3] == "torch")  # either reading converts identically
        raise CheckpointError(f"{source}: the tensors fit both torch and paddle naming (square Linear "
                              f"weights, no BatchNorm); say which with --from torch|paddle")
    return exact[0]


def _transposes(slots: Mapping[str, Slot]) -> bool:
    """Whether any tensor is laid out transposed between the frameworks (a Linear weight)."""
    return any(rule.layout == "transpose" and rule.kind == slot.kind and rule.paddle_name == slot.name
               for slot in slots.values() for rule in RULES)


def _located(raw: RawCheckpoint, mapping: Mapping, framework: str, where: str | None, prefix: str,
             exact: bool, slots: Mapping[str, Slot] | None = None) -> Located:
    """The weights found, each tensor under its slot's key once (a paddle RNN's aliases folded away)."""
    source = str(raw.path)
    weights = {k: to_numpy(v, k, source) for k, v in _strip(mapping, prefix).items()}
    if slots is not None:
        weights, problems = fold_aliases(weights, slots)
        if problems:
            raise CheckpointError(f"{source}: " + "; ".join(problems[:5]) + (
                f"; {len(problems) - 5} more" if len(problems) > 5 else "") + "; the file is damaged")
    return Located(weights, framework, where, prefix or None, exact)


# --------------------------------------------------------------------------- writing


def _contiguous(value: np.ndarray) -> np.ndarray:
    """C order without copying what already is (np.ascontiguousarray would turn 0-d into 1-d)."""
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")


def write_checkpoint(path: str | os.PathLike, fmt: str, tensors: Mapping[str, np.ndarray], framework: str,
                     spec_type: str) -> None:
    """Write `tensors` (already in `framework`'s naming and layout) to `path` in format `fmt`.

    `path` is written directly (callers pass a temp file and rename it); `fmt` is
    given rather than taken from the name for that reason.
    """
    writers: dict[str, Callable[[Path, Mapping[str, np.ndarray], str, str], None]] = {
        "torch": _write_torch, "paddle": _write_paddle, "safetensors": _write_safetensors, "npz": _write_npz}
    writers[fmt](Path(path), tensors, framework, spec_type)


def _write_torch(path: Path, tensors: Mapping[str, np.ndarray], framework: str, spec_type: str) -> None:
    from crossattn.frameworks import require

    torch = require("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only arrays: torch.save only reads them
        state = {k: torch.from_numpy(_contiguous(v)) for k, v in tensors.items()}
    try:
        torch.save(state, path)
    except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk) this way
        import shutil

        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"{_destination_of(path)}: cannot write it ({free / (1 << 20):,.1f} MiB free there; "
                              f"torch.save said: {str(exc).strip().splitlines()[-1][:200]}); nothing was "
                              f"written") from None


def _destination_of(tmp: Path) -> Path:
    """The file a temp name of `atomic_write` (`.NAME.XXXX.tmp`) stands for, for messages."""
    name = tmp.name
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return tmp.with_name(name[1:].rsplit(".", 2)[0])
    return tmp


def _write_paddle(path: Path, tensors: Mapping[str, np.ndarray], framework: str, spec_type: str) -> None:
    """The pickle paddle.save writes for a dict of numpy arrays, without the pickler's memo.

    paddle.save hands a dict of arrays to pickle.Pickler(protocol=4). The memo of
    that pickler keeps every array's serialised bytes alive until the end, doubling
    peak memory; fast mode leaves the memo out (the file only loses back-references
    the dict never needs). paddle.load reads the result like any paddle.save file.
    """
    state = {k: _contiguous(v) for k, v in tensors.items()}
    with open(path, "wb") as fh:
        hashed = HashingWriter(fh)
        try:
            pickler = pickle.Pickler(hashed, protocol=4)
            pickler.fast = True
            pickler.dump(state)
        finally:  # a failed write (a full disk) still ends the hashing thread
            digest = hashed.hexdigest()
    seal_pickle(path, digest)  # a SHA-256 trailer after STOP: paddle.load and pickle stop before it


def _write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], framework: str, spec_type: str) -> None:
    from safetensors.numpy import save_file

    from safetensors import SafetensorError

    state = {k: _contiguous(v) for k, v in tensors.items()}
    try:
        save_file(state, str(path), metadata={"framework": framework, "spec": spec_type,
                                              METADATA_KEY: tensors_digest(state)})
    except SafetensorError as exc:  # not an OSError: a full disk or a file-size limit reads as this
        import shutil

        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"{_destination_of(path)}: cannot write it ({free / (1 << 20):,.1f} MiB free there; "
                              f"safetensors said: {str(exc).strip()[:200]}); nothing was written") from None


def _write_npz(path: Path, tensors: Mapping[str, np.ndarray], framework: str, spec_type: str) -> None:
    """np.savez's layout (one .npy per key, stored) streamed, with any key allowed as a name."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.comment = (NPZ_COMMENT + tensors_digest({k: np.asanyarray(v) for k, v in tensors.items()})).encode()
        for key, value in tensors.items():
            with archive.open(key + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
