"""Shared pieces of the dataset readers: errors, the Dataset record, where
data lives, checksums and an atomic downloader.

Everything here uses only the standard library and numpy so that the PyTorch
and PaddlePaddle sides read byte-identical inputs.

Data location (first match wins):

1. the ``data_dir`` argument of a loader,
2. the ``CROSSATTN_DATA`` environment variable,
3. ``~/.cache/crossattn/data``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CrossattnError

ENV_VAR = "CROSSATTN_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/crossattn/data")
LOCATION_RULE = (
    f"the data directory is --data-dir (data_dir= from Python), else ${ENV_VAR}, "
    f"else {DEFAULT_DATA_DIR}"
)


class DataError(CrossattnError):
    """Base for every user-facing problem with datasets (no traceback needed)."""


class MissingDataError(DataError):
    """A dataset file is absent and may not (or could not) be downloaded."""


class ChecksumError(DataError):
    """A file's md5 differs from the published one."""


class DownloadError(DataError):
    """Fetching a file failed; nothing was left on disk."""


class DataFormatError(DataError):
    """A file exists but its contents are not what the format promises."""


class UnsafePickleError(DataFormatError):
    """A pickle referenced a global outside the allow-list."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Framework-neutral split: both trainers wrap these very arrays.

    ``images`` is uint8 NCHW and ``labels`` int64, checked on construction so
    that a reader bug surfaces here rather than as a silent dtype cast later.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 NCHW, got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"{self.name}: labels must be int64 of shape ({len(self.images)},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class RemoteFile:
    """A published file: where it goes, where it comes from, what it hashes to."""

    filename: str
    url: str
    md5: str


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Pick the data directory so every entry point agrees on one rule."""
    if data_dir is not None and str(data_dir) != "":
        chosen = Path(data_dir)
    elif os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR])
    else:
        chosen = DEFAULT_DATA_DIR
    return chosen.expanduser().absolute()


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, streamed so large archives need no extra memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, url: str | None = None) -> None:
    """Raise ChecksumError unless ``path`` hashes to ``expected``."""
    actual = md5_file(path)
    if actual != expected.lower():
        source = f" from {url}" if url else ""
        raise ChecksumError(
            f"{path} has md5 {actual} but {expected} was expected; the file is "
            f"corrupt, truncated or not the official one. Delete it and fetch it "
            f"again{source} (or pass --download after deleting it)."
        )


def placement_hint(remote: RemoteFile, dest: Path) -> str:
    """One sentence telling a user exactly how to supply a file by hand."""
    return (
        f"put {remote.filename} at {dest} (download it from {remote.url}, "
        f"md5 {remote.md5})"
    )


def missing_error(what: str, items: Sequence[tuple[RemoteFile, Path]]) -> MissingDataError:
    """Build the one-paragraph 'where to put which file' error."""
    hints = "; and ".join(placement_hint(remote, dest) for remote, dest in items)
    return MissingDataError(
        f"{what} not found. To fix this, {hints}; or pass --download "
        f"(download=True from Python) to fetch it automatically. Note: {LOCATION_RULE}."
    )


def _temp_path_for(dest: Path) -> Path:
    """Hidden sibling of ``dest``: same filesystem, so os.replace is atomic."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p that reports which folders it created, deepest first."""
    created = []
    probe = directory
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    directory.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(directories: list[Path]) -> None:
    """Undo _make_parents after a failure, sparing anything that gained files."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def download_file(remote: RemoteFile, dest: Path, *, timeout: float = 60.0,
                  chunk_size: int = 1 << 20) -> Path:
    """Fetch ``remote`` to ``dest`` all-or-nothing.

    Bytes go to a temp file next to ``dest`` and are hashed on the fly; only a
    complete file with the right md5 is renamed into place, so an interrupted
    or corrupted transfer never looks like a valid dataset.
    """
    created = _make_parents(dest.parent)
    tmp = _temp_path_for(dest)
    done = False
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with open(tmp, "xb") as out, urllib.request.urlopen(
                remote.url, timeout=timeout
            ) as response:
                while chunk := response.read(chunk_size):
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DownloadError(
                f"Could not download {remote.url} ({reason}). If this machine is "
                f"offline, {placement_hint(remote, dest)} yourself."
            ) from exc
        if digest.hexdigest() != remote.md5.lower():
            raise ChecksumError(
                f"Downloaded {remote.url} has md5 {digest.hexdigest()} but "
                f"{remote.md5} was expected; nothing was written. Retry, or "
                f"{placement_hint(remote, dest)} yourself."
            )
        os.replace(tmp, dest)
        done = True
    finally:
        tmp.unlink(missing_ok=True)
        if not done:
            _remove_empty(created)
    return dest


def ensure_file(remote: RemoteFile, root: Path, *, what: str, download: bool,
                verify_checksum: bool) -> Path:
    """Return the local path of ``remote`` under ``root``, fetching if allowed."""
    dest = root / remote.filename
    if dest.is_file():
        if verify_checksum:
            verify_md5(dest, remote.md5, remote.url)
        return dest
    if not download:
        raise missing_error(what, [(remote, dest)])
    return download_file(remote, dest)
