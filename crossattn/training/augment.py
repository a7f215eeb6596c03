"""Augmentation drawn in numpy from (seed, epoch, batch): both twins gather the same pixels.

A crop-and-flip is expressed as two index arrays into the zero-padded image:
rows[n, i] and cols[n, j]. A flip reverses cols. The twins pad and gather;
they draw nothing. Draws come from a splitmix64 hash rather than a numpy
Generator stream, so they do not depend on the numpy version.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_MASK64 = (1 << 64) - 1
_STREAM = 0xA5A5_0001


def _mix(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_ints(count: int, high: int, seed: int, epoch: int, batch: int, stream: int) -> np.ndarray:
    """`count` integers in [0, high) fixed by (seed, epoch, batch, stream)."""
    key = _mix(_mix(_mix(_mix(seed + _STREAM) + epoch) + batch) + stream)
    with np.errstate(over="ignore"):
        bits = _mix_array(np.arange(count, dtype=np.uint64) + np.uint64(key))
    return (bits % np.uint64(high)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class CropFlip:
    """Index arrays into the padded batch: out[n, c, i, j] = padded[n, c, rows[n, i], cols[n, j]]."""

    padding: int
    rows: np.ndarray  # (N, H) int64
    cols: np.ndarray  # (N, W) int64
    flipped: np.ndarray  # (N,) bool, for inspection


def crop_flip(batch_size: int, height: int, width: int, padding: int, hflip: bool, seed: int, epoch: int,
              batch: int) -> CropFlip:
    """Random crop offsets in [0, 2*padding] per image and a fair coin for the flip."""
    dy = uniform_ints(batch_size, 2 * padding + 1, seed, epoch, batch, 0)
    dx = uniform_ints(batch_size, 2 * padding + 1, seed, epoch, batch, 1)
    flipped = uniform_ints(batch_size, 2, seed, epoch, batch, 2).astype(bool) if hflip \
        else np.zeros(batch_size, dtype=bool)
    rows = dy[:, None] + np.arange(height)[None, :]
    cols = np.where(flipped[:, None], np.arange(width)[::-1][None, :], np.arange(width)[None, :]) + dx[:, None]
    return CropFlip(padding, rows.astype(np.int64), cols.astype(np.int64), flipped)


def apply_numpy(images: np.ndarray, aug: CropFlip) -> np.ndarray:
    """Reference implementation on float NCHW arrays (tests compare the twins against it)."""
    p = aug.padding
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    n = np.arange(len(images))[:, None, None]
    out = padded[n, :, aug.rows[:, :, None], aug.cols[:, None, :]]  # (N, H, W, C)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
