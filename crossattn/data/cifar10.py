"""CIFAR-10 from the official python-version archive, read without extracting.

The batches are Python 2 pickles. Unpickling can run arbitrary code, so a
restricted unpickler admits only the globals a plain numpy array needs.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .download import (
    DataError,
    DataFormatError,
    Dataset,
    RemoteFile,
    UnsafePickleError,
    ensure_file,
    resolve_data_dir,
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
SPLIT_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_IMAGE_SHAPE = (3, 32, 32)
_ROW_SIZE = 3 * 32 * 32


def _numpy_reconstruct() -> Callable[..., Any]:
    """numpy's array-rebuild hook, wherever this numpy version keeps it."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Resolved up front (not via import) so an allowed name can never be
# redirected to something else and no deprecated module is touched.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays and nothing executable."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name} from {self._source}: "
                f"CIFAR-10 batches hold only plain arrays, so this file is not a "
                f"genuine CIFAR-10 batch."
            ) from None


def _unpickle_batch(payload: bytes, source: str) -> Any:
    """Safely decode one batch file; any decoding failure names the file."""
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(payload), source).load()
    except DataError:
        raise
    except Exception as exc:  # pickle raises many types for corrupt input
        raise DataFormatError(
            f"{source} is not a readable CIFAR-10 batch pickle ({exc!r})."
        ) from exc


def _field(batch: dict[Any, Any], key: str, source: str) -> Any:
    """Fetch a key that Python 2 wrote as bytes (tolerating str keys too)."""
    for candidate in (key.encode("ascii"), key):
        if candidate in batch:
            return batch[candidate]
    raise DataFormatError(f"{source} has no {key!r} entry; not a CIFAR-10 batch.")


def _validate_batch(batch: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one decoded batch and return (images NCHW uint8, labels int64)."""
    if not isinstance(batch, dict):
        raise DataFormatError(
            f"{source} holds a {type(batch).__name__}, expected a dict."
        )
    data = _field(batch, "data", source)
    labels_raw = _field(batch, "labels", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 \
            or data.ndim != 2 or data.shape[1] != _ROW_SIZE:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) \
            else type(data).__name__
        raise DataFormatError(
            f"{source}: 'data' must be a uint8 array of shape (N, {_ROW_SIZE}), "
            f"got {desc}."
        )
    labels = np.asarray(labels_raw)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataFormatError(
            f"{source}: 'labels' must be {len(data)} integers, got "
            f"{labels.dtype} {labels.shape}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataFormatError(
            f"{source}: labels must lie in [0, {len(CIFAR10_CLASSES) - 1}], got "
            f"[{labels.min()}, {labels.max()}]."
        )
    return data.reshape((-1, *_IMAGE_SHAPE)), labels.astype(np.int64)


def _member_name(name: str) -> str:
    """Normalise tar member names so './cifar-10-batches-py/x' also matches."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_from_archive(archive: Path, batches: Iterable[str]) -> dict[str, Any]:
    """Decode wanted batches in one streaming pass (gzip cannot seek cheaply)."""
    wanted = {f"{CIFAR10_DIRNAME}/{b}": b for b in batches}
    found: dict[str, Any] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                batch = wanted.get(_member_name(member.name))
                if batch is None or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                assert fh is not None  # regular files always have a stream
                source = f"{archive}:{member.name}"
                found[batch] = _validate_batch(_unpickle_batch(fh.read(), source), source)
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(
            f"{archive} is not a readable tar.gz archive ({exc}). Delete it and "
            f"download it again from {CIFAR10_URL}."
        ) from exc
    missing = [name for name in wanted if wanted[name] not in found]
    if missing:
        raise DataFormatError(
            f"{archive} lacks {', '.join(missing)}; it is not the official "
            f"CIFAR-10 python archive."
        )
    return found


def _read_from_directory(directory: Path, batches: Iterable[str]) -> dict[str, Any]:
    """Decode wanted batches from an already-extracted archive."""
    found: dict[str, Any] = {}
    for batch in batches:
        path = directory / batch
        found[batch] = _validate_batch(_unpickle_batch(path.read_bytes(), str(path)), str(path))
    return found


def _extracted_directory(root: Path, batches: Iterable[str]) -> Path | None:
    """An extracted batch folder holding every wanted file, if there is one."""
    for candidate in (root / CIFAR10_DIRNAME, root):
        if all((candidate / b).is_file() for b in batches):
            return candidate
    return None


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    verify_checksum: bool = True,
    md5: str | None = None,
) -> Dataset:
    """Load a CIFAR-10 split as uint8 NCHW images and int64 labels.

    Looks for ``cifar-10-python.tar.gz`` in the data directory (checked against
    ``md5``, the official hash unless overridden), else an extracted
    ``cifar-10-batches-py/`` folder, else downloads when ``download`` is true.
    ``verify_checksum=False`` exists for hand-built test archives.
    """
    if split not in SPLIT_BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    batches = SPLIT_BATCHES[split]
    root = resolve_data_dir(data_dir)
    remote = RemoteFile(CIFAR10_ARCHIVE, CIFAR10_URL, md5 or CIFAR10_MD5)
    has_archive = (root / CIFAR10_ARCHIVE).is_file()
    extracted = None if has_archive else _extracted_directory(root, batches)
    if extracted is not None:
        found = _read_from_directory(extracted, batches)
    else:
        archive = ensure_file(remote, root, what="CIFAR-10 archive",
                              download=download, verify_checksum=verify_checksum)
        found = _read_from_archive(archive, batches)
    images = np.concatenate([found[b][0] for b in batches])
    labels = np.concatenate([found[b][1] for b in batches])
    return Dataset(images=images, labels=labels, classes=CIFAR10_CLASSES,
                   name=f"cifar10-{split}")
