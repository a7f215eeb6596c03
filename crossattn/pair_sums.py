"""The sums every verdict needs of a tensor pair, in one blocked pass over memory.

A comparison needs of candidate a and reference b: ||a - b||, max |a - b|,
||a||, ||b|| and a.b. Taken one numpy pass at a time that is about ten passes
over each array (and a float32 judgement, with both float64 results, forty):
on a full-size model, comparing cost as much as a framework's step. Here the
arrays are walked in blocks small enough to stay in a core's cache, every sum
is taken from the block while it is there, and each array is read from memory
once. Sums are float64 (float32 blocks are widened first), BLAS within a block.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

#: elements per block: a few float64 blocks and their difference fit in a core's L2 cache
BLOCK = 1 << 16


@dataclasses.dataclass(frozen=True)
class PairSums:
    """Sums of a candidate a against a reference b (squares, not norms: they add over blocks)."""

    diff_sq: float  # ||a - b||^2
    max_abs: float  # max |a - b| (nan where a difference is nan)
    a_sq: float  # ||a||^2
    b_sq: float  # ||b||^2
    dot: float  # a.b


class _Acc:
    """Running sums of one pair over blocks."""

    __slots__ = ("diff_sq", "high", "low", "a_sq", "b_sq", "dot")

    def __init__(self) -> None:
        self.diff_sq = self.a_sq = self.b_sq = self.dot = 0.0
        self.high, self.low = -math.inf, math.inf

    def add(self, a: np.ndarray, b: np.ndarray, diff: np.ndarray, full: bool = True) -> None:
        """`full` false: the norms alone (max abs and a.b stay nan: the float32 rule reports the float32
        pair's)."""
        self.diff_sq += float(np.dot(diff, diff))
        self.a_sq += float(np.dot(a, a))
        self.b_sq += float(np.dot(b, b))
        if not full:
            self.high = self.low = self.dot = math.nan
            return
        self.dot += float(np.dot(a, b))
        high, low = float(diff.max()), float(diff.min())
        if math.isnan(high) or math.isnan(low):
            self.high = self.low = math.nan
        elif not math.isnan(self.high):
            self.high, self.low = max(self.high, high), min(self.low, low)

    def result(self) -> PairSums:
        if math.isnan(self.high):
            return PairSums(self.diff_sq, math.nan, self.a_sq, self.b_sq, self.dot)
        return PairSums(self.diff_sq, max(self.high, -self.low, 0.0), self.a_sq, self.b_sq, self.dot)


def _flat(value: np.ndarray) -> np.ndarray:
    return np.ravel(np.asarray(value))


def _widened(block: np.ndarray, buffer: np.ndarray | None) -> np.ndarray:
    """A float64 block: the block itself, or its values copied into `buffer`."""
    if buffer is None or block.dtype == np.float64:
        return block
    out = buffer[:block.size]
    out[...] = block
    return out


def pair_sums(a: np.ndarray, b: np.ndarray) -> PairSums:
    """Sums of a against b (same size)."""
    fa, fb = _flat(a), _flat(b)
    if not fa.size:
        return PairSums(0.0, 0.0, 0.0, 0.0, 0.0)
    acc = _Acc()
    size = min(fa.size, BLOCK)
    wa, wb = (np.empty(size) if f.dtype != np.float64 else None for f in (fa, fb))
    diff = np.empty(size)
    for start in range(0, fa.size, BLOCK):
        xa, xb = _widened(fa[start:start + BLOCK], wa), _widened(fb[start:start + BLOCK], wb)
        acc.add(xa, xb, np.subtract(xa, xb, out=diff[:xa.size]))
    return acc.result()


@dataclasses.dataclass(frozen=True)
class JudgedSums:
    """What the float32 rule needs of both frameworks' float32 and float64 results, from one pass."""

    single: PairSums  # candidate against reference, float32 results
    double: PairSums  # candidate against reference, float64 results: norms only (max_abs, dot nan)
    reference_rounding: float  # ||reference - reference64||
    candidate_rounding: float  # ||candidate - candidate64||


def judged_sums(a: np.ndarray, b: np.ndarray, a64: np.ndarray, b64: np.ndarray) -> JudgedSums:
    """Sums of the float32 pair (a, b), the float64 pair (a64, b64) and each side's rounding."""
    flats = [_flat(v) for v in (a, b, a64, b64)]
    if not flats[0].size:
        zero = PairSums(0.0, 0.0, 0.0, 0.0, 0.0)
        return JudgedSums(zero, zero, 0.0, 0.0)
    single, double = _Acc(), _Acc()
    ref_round = cand_round = 0.0
    size = min(flats[0].size, BLOCK)
    buffers = [np.empty(size) if f.dtype != np.float64 else None for f in flats] + [np.empty(size), np.empty(size)]
    for start in range(0, flats[0].size, BLOCK):
        xa, xb, xa64, xb64 = (_widened(f[start:start + BLOCK], buf) for f, buf in zip(flats, buffers))
        n = xa.size
        diff = np.subtract(xa, xb, out=buffers[4][:n])
        single.add(xa, xb, diff)
        diff = np.subtract(xa64, xb64, out=buffers[4][:n])
        double.add(xa64, xb64, diff, full=False)
        diff = np.subtract(xb, xb64, out=buffers[4][:n])
        ref_round += float(np.dot(diff, diff))
        diff = np.subtract(xa, xa64, out=buffers[5][:n])
        cand_round += float(np.dot(diff, diff))
    return JudgedSums(single.result(), double.result(), math.sqrt(ref_round), math.sqrt(cand_round))


def _swapped(sums: PairSums) -> PairSums:
    return dataclasses.replace(sums, a_sq=sums.b_sq, b_sq=sums.a_sq)


class SumsMemo:
    """Sums already taken, for the same arrays compared the other way round.

    When a check's two directions share their steps (`check.StepCache`), the
    second direction compares the very arrays the first did, candidate and
    reference exchanged; every sum is then the first's, a and b swapped. An
    entry keeps its arrays alive (an id names an array only while it lives) and
    is dropped when used; `clear` drops the rest.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[int, ...], tuple[tuple[np.ndarray, ...], PairSums | JudgedSums]] = {}

    def pair(self, a: np.ndarray, b: np.ndarray) -> PairSums:
        hit = self.entries.pop((id(b), id(a)), None)
        if hit is not None:
            return _swapped(hit[1])
        sums = pair_sums(a, b)
        self.entries[id(a), id(b)] = ((a, b), sums)
        return sums

    def judged(self, a: np.ndarray, b: np.ndarray, a64: np.ndarray, b64: np.ndarray) -> JudgedSums:
        hit = self.entries.pop((id(b), id(a), id(b64), id(a64)), None)
        if hit is not None:
            sums = hit[1]
            return JudgedSums(_swapped(sums.single), _swapped(sums.double), sums.candidate_rounding,
                              sums.reference_rounding)
        sums = judged_sums(a, b, a64, b64)
        self.entries[id(a), id(b), id(a64), id(b64)] = ((a, b, a64, b64), sums)
        return sums

    def clear(self) -> None:
        self.entries.clear()
