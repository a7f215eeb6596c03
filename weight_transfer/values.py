"""Tensor values a conversion would carry over silently wrong: non-finite weights and lossy casts.

A checkpoint of NaN weights converts "exactly" (NaN to NaN) and a complex tensor
cast to the model's float32 drops its imaginary part without a word. Both are
found before anything is written and refused unless the user allows them.

Lossy means information is lost beyond rounding: an imaginary part, a value out
of the target dtype's range (it would become inf or wrap), a fraction cast to an
integer. float64 -> float32 rounding is not lossy in this sense: it is the cast
every float32 model applies, and verification measures it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crossattn.errors import CrossattnError
from weight_transfer.slots import Slot

SHOWN = 8  # tensors named per problem before "and N more"


class DamagedValues(CrossattnError):
    """Non-finite weights or casts that would lose information; refused unless allowed."""


def non_finite(weights: Mapping[str, np.ndarray]) -> list[str]:
    """One line per tensor holding NaN or infinite values."""
    found = []
    for key, value in weights.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fc" or value.size == 0:
            continue
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            nans = int(np.count_nonzero(np.isnan(value)))
            found.append(f"`{key}`: {bad} of {value.size} values non-finite ({nans} NaN, {bad - nans} infinite)")
    return found


def lossy_cast(value: np.ndarray, target: np.dtype) -> str | None:
    """Why casting `value` to `target` loses information, or None when it keeps it (up to rounding)."""
    value = np.asarray(value)
    target = np.dtype(target)
    source = value.dtype
    if value.size == 0 or source == target:
        return None
    if source.kind == "c" and target.kind != "c":
        imaginary = int(np.count_nonzero(value.imag))
        if imaginary:
            return f"complex {source} -> {target} drops the imaginary part of {imaginary} of {value.size} values"
        value = value.real
        source = value.dtype
    if target.kind in "fc":
        if source.kind in "fc":
            finite = np.isfinite(value)
            with np.errstate(over="ignore", invalid="ignore"):
                overflow = int(np.count_nonzero(finite & ~np.isfinite(value.astype(target))))
            if overflow:
                return (f"{source} -> {target} turns {overflow} values beyond +-{float(np.finfo(target).max):.3g} "
                        f"into infinities")
            return None
        if source.kind in "iu":  # long double holds every int64 exactly
            if not np.array_equal(value.astype(target).astype(np.longdouble), value.astype(np.longdouble)):
                return f"{source} -> {target} cannot hold these integers exactly"
        return None
    if target.kind in "iub":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = value.astype(target)
            same = np.array_equal(cast.astype(np.float64 if source.kind == "f" else source), value)
        if not same:
            return f"{source} -> {target} changes values (fractions, NaN or out of range)"
    return None


def lossy_casts(weights: Mapping[str, np.ndarray], slots: Mapping[str, Slot]) -> list[str]:
    """One line per tensor whose cast to its slot's dtype would lose information."""
    found = []
    for key, value in weights.items():
        slot = slots.get(key)
        if slot is None:
            continue
        why = lossy_cast(value, np.dtype(slot.dtype))
        if why:
            found.append(f"`{key}`: {why}")
    return found


def _listed(lines: list[str]) -> str:
    more = f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return "; ".join(lines[:SHOWN]) + more


def check_values(weights: Mapping[str, np.ndarray], slots: Mapping[str, Slot], source: str,
                 allow_nonfinite: bool = False, allow_lossy: bool = False) -> list[str]:
    """Refuse non-finite weights and lossy casts unless allowed; returns the notes for what was allowed."""
    notes, problems = [], []
    bad = non_finite(weights)
    if bad:
        line = f"{len(bad)} tensor(s) hold non-finite values: {_listed(bad)}"
        (notes if allow_nonfinite else problems).append(line + (" (allowed by --allow-nonfinite)"
                                                                 if allow_nonfinite else ""))
    lossy = lossy_casts(weights, slots)
    if lossy:
        line = f"{len(lossy)} tensor(s) would lose information in the cast to the model's dtype: {_listed(lossy)}"
        (notes if allow_lossy else problems).append(line + (" (allowed by --allow-lossy-cast)" if allow_lossy else ""))
    if problems:
        flags = [flag for flag, hit in (("--allow-nonfinite", bad and not allow_nonfinite),
                                        ("--allow-lossy-cast", lossy and not allow_lossy)) if hit]
        raise DamagedValues(f"{source}: refused, nothing was written: " + "; ".join(problems)
                            + f". A checkpoint like this is usually damaged (a diverged run, a wrong file); pass "
                              f"{' and '.join(flags)} to convert it anyway")
    return notes
