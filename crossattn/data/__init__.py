"""Framework-neutral dataset readers and batch ordering.

Readers return numpy arrays (uint8 NCHW images, int64 labels) so PyTorch and
PaddlePaddle train on identical bytes. Files are looked up in the ``data_dir``
argument, else the ``CROSSATTN_DATA`` environment variable, else
``~/.cache/crossattn/data``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .cifar10 import CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL, load_cifar10
from .download import (
    ENV_VAR,
    ChecksumError,
    DataError,
    DataFormatError,
    Dataset,
    DownloadError,
    MissingDataError,
    RemoteFile,
    UnsafePickleError,
    download_file,
    md5_file,
    resolve_data_dir,
)
from .mnist import MNIST_BASE_URL, MNIST_CLASSES, MNIST_MD5, load_mnist
from .synthetic import make_synthetic

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "ENV_VAR", "MNIST_BASE_URL",
    "MNIST_CLASSES", "MNIST_MD5", "ChecksumError", "DataError", "DataFormatError",
    "Dataset", "DownloadError", "MissingDataError", "RemoteFile",
    "UnsafePickleError", "download_file", "iterate_batches", "load_cifar10",
    "load_mnist", "make_synthetic", "md5_file", "num_batches", "resolve_data_dir",
    "shuffle_order",
]

_MASK64 = (1 << 64) - 1


def _mix64_scalar(x: int) -> int:
    """splitmix64 finaliser on a Python int (exact, no overflow warnings)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shuffle_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of range(n) fixed by (seed, epoch).

    Built from a hash rather than numpy's Generator, whose streams may change
    between numpy versions: the Paddle and Torch environments can pin
    different numpys and must still agree on the order.
    """
    key = _mix64_scalar(_mix64_scalar(seed) + (epoch & _MASK64) + 1)
    keys = _mix64_array(np.arange(n, dtype=np.uint64) + np.uint64(key))
    return np.argsort(keys, kind="stable").astype(np.int64)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch, e.g. to skip ahead with itertools.islice on resume."""
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    n: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
) -> Iterator[np.ndarray]:
    """Yield int64 index arrays for one epoch.

    The order depends only on (n, seed, epoch), never on global RNG state or
    on how many epochs ran before, so both frameworks see the same batches and
    a resumed run replays exactly what an uninterrupted one would.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = shuffle_order(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
    for b in range(num_batches(n, batch_size, drop_last)):
        yield order[b * batch_size:(b + 1) * batch_size]
