"""MNIST from the original IDX files, gzipped or not.

IDX is a tiny self-describing format: a big-endian magic number whose low
bytes give the element type and rank, then one big-endian uint32 per
dimension, then the raw data.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from .download import (
    DataFormatError,
    Dataset,
    RemoteFile,
    download_file,
    missing_error,
    resolve_data_dir,
    verify_md5,
)

MNIST_BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IMAGE_HW = (28, 28)


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, transparently gunzipped by extension."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path} could not be read ({exc}).") from exc


def parse_idx(payload: bytes, expected_magic: int, source: str) -> np.ndarray:
    """Decode an unsigned-byte IDX buffer, insisting on the expected magic."""
    if len(payload) < 4:
        raise DataFormatError(f"{source} is too short to be an IDX file.")
    (magic,) = struct.unpack(">I", payload[:4])
    if magic != expected_magic:
        raise DataFormatError(
            f"{source} has IDX magic {magic}, expected {expected_magic}; it is "
            f"not an MNIST {'image' if expected_magic == IDX_IMAGES_MAGIC else 'label'} file."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataFormatError(f"{source} ends inside its IDX header.")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) - header != expected:
        raise DataFormatError(
            f"{source} declares shape {dims} ({expected} bytes) but holds "
            f"{len(payload) - header} data bytes."
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) from disk."""
    return parse_idx(_read_bytes(path), expected_magic, str(path))


def _validate(images: np.ndarray, labels: np.ndarray, sources: tuple[Path, Path]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Check that images and labels describe the same MNIST samples."""
    if images.shape[1:] != _IMAGE_HW:
        raise DataFormatError(
            f"{sources[0]} holds images of shape {images.shape[1:]}, expected {_IMAGE_HW}."
        )
    if len(labels) != len(images):
        raise DataFormatError(
            f"{sources[1]} has {len(labels)} labels but {sources[0]} has "
            f"{len(images)} images."
        )
    if len(labels) and labels.max() >= len(MNIST_CLASSES):
        raise DataFormatError(
            f"{sources[1]}: labels must lie in [0, 9], found {labels.max()}."
        )
    return images[:, None, :, :], labels.astype(np.int64)


def _locate(root: Path, stem: str, remote: RemoteFile, verify_checksum: bool
            ) -> Path | None:
    """Prefer the .gz (its md5 is published); fall back to an unpacked file."""
    gz, raw = root / f"{stem}.gz", root / stem
    if gz.is_file():
        if verify_checksum:
            verify_md5(gz, remote.md5, remote.url)
        return gz
    return raw if raw.is_file() else None


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    split: Literal["train", "test"] = "train",
    download: bool = False,
    verify_checksum: bool = True,
    md5s: Mapping[str, str] | None = None,
) -> Dataset:
    """Load an MNIST split as uint8 (N, 1, 28, 28) images and int64 labels.

    Files live directly in the data directory as ``<name>.gz`` (md5-checked
    unless ``verify_checksum`` is false; ``md5s`` overrides hashes by .gz name)
    or uncompressed ``<name>`` (not checkable: the published hashes are of the
    .gz files).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = resolve_data_dir(data_dir)
    hashes = {**MNIST_MD5, **(md5s or {})}
    remotes = {
        stem: RemoteFile(f"{stem}.gz", MNIST_BASE_URL + f"{stem}.gz", hashes[f"{stem}.gz"])
        for stem in SPLIT_FILES[split]
    }
    paths = {stem: _locate(root, stem, r, verify_checksum) for stem, r in remotes.items()}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing and not download:
        raise missing_error(
            f"MNIST {split} data",
            [(remotes[stem], root / remotes[stem].filename) for stem in missing],
        )
    for stem in missing:
        paths[stem] = download_file(remotes[stem], root / remotes[stem].filename)
    image_path, label_path = (paths[stem] for stem in SPLIT_FILES[split])
    assert image_path is not None and label_path is not None
    images, labels = _validate(
        read_idx(image_path, IDX_IMAGES_MAGIC),
        read_idx(label_path, IDX_LABELS_MAGIC),
        (image_path, label_path),
    )
    return Dataset(images=images, labels=labels, classes=MNIST_CLASSES,
                   name=f"mnist-{split}")
