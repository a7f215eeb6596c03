"""Resampling as float64 linear maps, built once and applied identically by both twins.

Paddle computes adaptive-pooling gradients with a float32 1/bin-size, average-
pooling gradients likewise, and bilinear source coordinates in float32 even on
float64 tensors. Expressing these operations as matrices (or a divisor map)
built here in float64 makes both twins compute the very same linear map, equal
to torch's own operators (see docs/equivalence.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np


def adaptive_bin(index: int, in_size: int, out_size: int) -> tuple[int, int]:
    """Input range [start, end) averaged into output `index`: floor(i*n/m) to ceil((i+1)*n/m)."""
    return (index * in_size) // out_size, -((-(index + 1) * in_size) // out_size)


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of adaptive average pooling along one axis."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        start, end = adaptive_bin(i, in_size, out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    matrix.setflags(write=False)
    return matrix


def bilinear_source(index: int, in_size: int, out_size: int, align_corners: bool) -> float:
    """Source coordinate of output `index` under torch's linear interpolation rule."""
    if align_corners:
        return index * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return max((index + 0.5) * in_size / out_size - 0.5, 0.0)  # half-pixel centres, clamped at 0


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """(out_size, in_size) float64 matrix of linear interpolation along one axis."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = bilinear_source(i, in_size, out_size, align_corners)
        low = min(math.floor(source), in_size - 1)
        high = min(low + 1, in_size - 1)
        frac = source - low
        matrix[i, low] += 1.0 - frac
        matrix[i, high] += frac
    matrix.setflags(write=False)
    return matrix



@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """Where an average pool reads and what it divides by, for one input size."""

    out_size: tuple[int, int]
    #: zeros added (top, bottom, left, right) so that every window is a full strided slice
    pads: tuple[int, int, int, int]
    #: divisor of each output cell [out_h, out_w]
    divisor: np.ndarray


def _pool_axis(size: int, kernel: int, stride: int, padding: int, count_padding: bool,
               ceil_mode: bool) -> tuple[int, int, np.ndarray]:
    """Output length, zeros needed after the input, divisors: torch's AvgPool rules along one axis."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:  # no window may start in the trailing padding
        out -= 1
    starts = np.arange(out) * stride - padding
    ends = np.minimum(starts + kernel, size + padding)
    counted = ends - starts if count_padding else np.minimum(ends, size) - np.maximum(starts, 0)
    after = max(padding, (out - 1) * stride + kernel - size - padding)
    return out, after, counted


def avg_pool_geometry(height: int, width: int, kernel: int, stride: int, padding: int = 0,
                      count_padding: bool = True, ceil_mode: bool = False) -> PoolGeometry:
    """`count_padding` is torch's count_include_pad (paddle: exclusive = not count_padding)."""
    out_h, after_h, count_h = _pool_axis(height, kernel, stride, padding, count_padding, ceil_mode)
    out_w, after_w, count_w = _pool_axis(width, kernel, stride, padding, count_padding, ceil_mode)
    divisor = np.outer(count_h, count_w).astype(np.float64)
    return PoolGeometry((out_h, out_w), (padding, after_h, padding, after_w), divisor)


