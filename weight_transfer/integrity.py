"""Checkpoint integrity: damage is found before a damaged file is loaded, converted or resumed.

Every format gets the strongest check it allows:

    .pt (zip) / .npz   the archive's own CRC-32 of every member, which torch.load never checks
    .pdparams          a SHA-256 trailer after the pickle's STOP opcode, on files crossattn writes
                       (pickle and paddle.load stop reading at STOP, so the file stays a paddle file)
    .safetensors       a SHA-256 of the tensors (names, dtypes, shapes, bytes) in the metadata,
                       on files crossattn writes

A file crossattn did not write may carry no checksum (a foreign .pdparams, a legacy
non-zip .pt); it is then reported as unverified, not refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import queue
import threading
import zipfile
from collections.abc import Mapping
from typing import Any
from pathlib import Path

import numpy as np

from crossattn.errors import CrossattnError

TRAILER_MAGIC = b"\n#crossattn-sha256:"
TRAILER_LEN = len(TRAILER_MAGIC) + 64 + 1
#: the safetensors metadata entry holding the tensors' digest
METADATA_KEY = "crossattn_sha256"
_CHUNK = 1 << 20


class DamagedCheckpoint(CrossattnError):
    """A checkpoint whose bytes do not match its own checksum: bit rot, a bad copy, a cut-short write."""


def _sha256(path: Path, end: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        left = end
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A binary file whose bytes are also fed to SHA-256 on a second thread as they are written, so sealing
    a pickle needs no second pass over the file (hashlib lets go of the GIL on large buffers: the hash runs
    beside the pickling, about 0.2 s of a 256 MiB checkpoint)."""

    #: chunks waiting to be hashed (each at most one tensor's bytes): bounds the memory held for the hash
    PENDING = 4

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._digest = hashlib.sha256()
        self._chunks: queue.Queue = queue.Queue(maxsize=self.PENDING)
        self._thread = threading.Thread(target=self._hash, daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._digest.update(chunk)

    def write(self, data: Any) -> int:
        written = self.handle.write(data)
        self._chunks.put(data if isinstance(data, bytes) else bytes(data))  # bytes cannot change under the hash
        return written

    def hexdigest(self) -> str:
        """The SHA-256 of everything written (call once, after the last write)."""
        self._chunks.put(None)
        self._thread.join()
        return self._digest.hexdigest()


def seal_pickle(path: str | os.PathLike, digest: str | None = None) -> None:
    """Append the SHA-256 trailer of everything written so far (call on the temp file, before the rename);
    `digest`: that SHA-256 when the writer already took it (`HashingWriter`)."""
    path = Path(path)
    size = path.stat().st_size
    value = digest if digest is not None else _sha256(path, size)
    with open(path, "ab") as handle:
        handle.write(TRAILER_MAGIC + value.encode("ascii") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _pickle_end(path: Path) -> int:
    """Offset just past the pickle's STOP opcode, found by walking the opcodes (no object is built)."""
    with open(path, "rb") as handle:
        try:
            for opcode, _, position in pickletools.genops(handle):
                if opcode.name == "STOP":
                    return handle.tell() if position is None else position + 1
        except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways
            raise DamagedCheckpoint(f"{path}: damaged: not a whole pickle ({type(exc).__name__}: {exc}); it was cut "
                                    f"short or changed after it was written") from None
    raise DamagedCheckpoint(f"{path}: damaged: the pickle has no end (cut short?)")


def verify_pickle(path: str | os.PathLike) -> bool:
    """True when the SHA-256 trailer matches; False when the file ends with the pickle (no trailer).

    Anything else after the pickle's end (a trailer that does not match, or is itself
    damaged, or stray bytes) is DamagedCheckpoint: paddle.save writes nothing there.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > TRAILER_LEN:  # a trailer where one is written: its SHA-256 then proves every byte before it
        with open(path, "rb") as handle:
            handle.seek(size - TRAILER_LEN - 1)
            tail = handle.read(TRAILER_LEN + 1)
        if tail[:1] == pickle.STOP and tail[1:].startswith(TRAILER_MAGIC) and tail.endswith(b"\n"):
            return _trailer_matches(path, size - TRAILER_LEN, tail[1:])
    end = _pickle_end(path)  # no trailer at the end: walk the opcodes to tell "none" from stray bytes
    if end == size:
        return False
    with open(path, "rb") as handle:
        handle.seek(end)
        tail = handle.read(TRAILER_LEN + 1)
    return _trailer_matches(path, end, tail)


def _trailer_matches(path: Path, end: int, tail: bytes) -> bool:
    """The trailer `tail` found at `end` is well formed and holds the SHA-256 of the bytes before it."""
    size = path.stat().st_size
    recorded = tail[len(TRAILER_MAGIC):-1]
    if len(tail) != TRAILER_LEN or not tail.startswith(TRAILER_MAGIC) or not tail.endswith(b"\n") \
            or not all(c in b"0123456789abcdef" for c in recorded):
        raise DamagedCheckpoint(f"{path}: damaged: {size - end} bytes follow the pickle and they are not a crossattn "
                                f"checksum; the file changed after it was written")
    actual = _sha256(path, end)
    if actual != recorded.decode("ascii"):
        raise DamagedCheckpoint(f"{path}: damaged: its SHA-256 is {actual[:16]}..., the checksum written with it says "
                                f"{recorded[:16].decode('ascii')}...; the file changed after it was written (a bad "
                                f"copy or disk)")
    return True


def verify_zip(path: str | os.PathLike) -> None:
    """Read every member of a zip archive (.pt, .npz) against its CRC-32; DamagedCheckpoint on any mismatch."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises zip, zlib, OS and value errors alike
        raise DamagedCheckpoint(f"{path}: damaged: not a whole zip archive ({exc}); it was cut short or "
                                f"changed after it was written") from None
    if bad is not None:
        raise DamagedCheckpoint(f"{path}: damaged: archive member `{bad}` fails its CRC-32 check; the file changed "
                                f"after it was written (a bad copy or disk), so its tensors cannot be trusted")


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: the same for any file holding them."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}\0{value.dtype.str}\0{list(value.shape)}\0".encode())
        digest.update(memoryview(value.reshape(-1).view(np.uint8)) if value.size else b"")
    return digest.hexdigest()


def recorded_digest(entries: Mapping[str, str]) -> str | None:
    """The digest among metadata entries, found even when damage changed a letter or two of its name.

    Damage can hit the entry's name as well as the tensors; a lookup by exact name would
    then take a damaged file for one without a checksum.
    """
    if METADATA_KEY in entries:
        return entries[METADATA_KEY]
    for key, value in entries.items():
        if len(key) == len(METADATA_KEY) and sum(a != b for a, b in zip(key, METADATA_KEY)) <= 2:
            return value
    return None


def verify_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], recorded: str | None) -> bool:
    """Check tensors read from a .safetensors file against the digest its metadata records (if any)."""
    if recorded is None:
        return False
    actual = tensors_digest(tensors)
    if actual != recorded:
        raise DamagedCheckpoint(f"{path}: damaged: its tensors hash to {actual[:16]}..., the checksum in its "
                                f"metadata says {recorded[:16]}...; the file changed after it was written")
    return True


def verify_file(path: str | os.PathLike, fmt: str) -> str:
    """Check a checkpoint file's own checksum before it is loaded; returns how it was checked.

    `fmt` is torch | paddle | npz | safetensors. safetensors digests are checked by the
    reader after loading (they cover tensors, not bytes), so here they report "deferred".
    """
    path = Path(path)
    if fmt in ("torch", "npz"):
        with open(path, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"  # torch's zip format (and .npz); legacy files are pickles
        if fmt == "npz" or zipped:
            verify_zip(path)
            return "zip CRC-32"
        return "none (a legacy torch file, not a zip archive)"
    if fmt == "paddle":
        return "SHA-256" if verify_pickle(path) else "none (no crossattn checksum)"
    return "deferred"
