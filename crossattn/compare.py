"""Comparison of two tensors: max abs, norm-relative error, cosine, and a verdict relative to scale.

`compare` judges a candidate against a reference in one dtype (float64 checks,
diff, convert). `judge` is the float32 rule: it takes both twins' float32
results and their float64 results for the same weights and input, and is the
one function every float32 verdict (check, diff, align) goes through.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from crossattn.pair_sums import PairSums, SumsMemo, judged_sums, pair_sums
from crossattn.tolerances import ACCURACY_FACTOR, FLOAT32_CONSTANT_OFFSET, FLOAT32_ROUNDING_FLOOR, Tolerance


@dataclasses.dataclass(frozen=True)
class Comparison:
    tensor: str
    category: str  # output | input_grad | param_grad | running_stat | buffer | layer_* | trainable
    max_abs: float
    norm_rel: float
    cosine: float
    passed: bool
    note: str
    atol: float
    rtol: float
    #: error in units of what is allowed: > 1 fails (nan when not a numeric comparison)
    score: float = math.nan
    #: float32 rule only: whether both frameworks' float64 results agreed (a failure is then float32 rounding's)
    truths_agree: bool | None = None

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @property
    def shape_mismatch(self) -> bool:
        return self.note.startswith("shape ")

    @property
    def severity(self) -> float:
        """Error in units of tolerance: > 1 fails."""
        if math.isfinite(self.score) or self.score == math.inf:
            return self.score
        return 0.0 if self.passed else math.inf


def _norm(value: np.ndarray) -> float:
    return float(np.linalg.norm(value.ravel())) if value.size else 0.0


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


@dataclasses.dataclass(frozen=True)
class _Measured:
    """What a verdict needs of a candidate a against a reference b, from one pass over each product."""

    max_abs: float
    norm_rel: float
    cosine: float
    error: float  # ||a - b||
    ref_norm: float  # ||b||


def _measured(sums: PairSums) -> _Measured:
    error, ref_norm, na = math.sqrt(sums.diff_sq), math.sqrt(sums.b_sq), math.sqrt(sums.a_sq)
    norm_rel = error / ref_norm if ref_norm > 0 else (0.0 if error == 0 else math.inf)
    cosine = sums.dot / (na * ref_norm) if na > 0 and ref_norm > 0 else (1.0 if na == ref_norm else 0.0)
    return _Measured(sums.max_abs, norm_rel, cosine, error, ref_norm)


def _measure(a: np.ndarray, b: np.ndarray) -> _Measured:
    """Every sum from one blocked pass over a and b (`pair_sums`): the comparison of a large model is mostly
    this."""
    return _measured(pair_sums(a, b))


def _stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(max abs, norm-relative to b, cosine) of a against b."""
    m = _measure(a, b)
    return m.max_abs, m.norm_rel, m.cosine


def _numeric(value) -> np.ndarray:
    """A floating array as it is (blocks are widened to float64 as they are summed); anything else as float64."""
    array = np.asarray(value)
    return array if array.dtype.kind == "f" else np.asarray(array, dtype=np.float64)


def _precheck(name: str, category: str, a: np.ndarray, b: np.ndarray, tol: Tolerance, note: str):
    """A shape mismatch or non-finite values decide the comparison before any tolerance does."""
    if a.shape != b.shape:
        return Comparison(name, category, math.inf, math.inf, math.nan, False,
                          _join(f"shape {list(a.shape)} vs reference {list(b.shape)}", note), tol.atol, tol.rtol,
                          math.inf)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        same = bool(np.array_equal(a, b, equal_nan=True))
        return Comparison(name, category, 0.0 if same else math.inf, 0.0 if same else math.inf, math.nan, same,
                          _join(note, "non-finite values"), tol.atol, tol.rtol, 0.0 if same else math.inf)
    return None


def allowed_error(reference: np.ndarray, tol: Tolerance, scale: float | None = None,
                  ref_norm: float | None = None) -> tuple[float, str]:
    """The largest ||candidate - reference|| that passes, and how it was set.

    Norm-relative to the larger of the reference's norm and `scale` (a family
    scale: the largest gradient of the case for a parameter gradient); an
    absolute bound only where both are exactly zero.
    """
    size = max(_norm(reference) if ref_norm is None else ref_norm, scale or 0.0)
    if size > 0:
        return tol.rtol * size, ""
    return tol.atol * math.sqrt(max(reference.size, 1)), "reference exactly zero: absolute bound"


def uniform_offset(candidate: np.ndarray, reference: np.ndarray, rtol: float) -> float | None:
    """c - 1 when candidate = c * reference to within rtol (a constant factor), else None."""
    candidate, reference = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    denom = float(np.dot(reference.ravel(), reference.ravel()))
    if denom == 0:
        return None
    c = float(np.dot(candidate.ravel(), reference.ravel())) / denom
    residual = _norm(candidate - c * reference)
    return c - 1.0 if residual <= rtol * math.sqrt(denom) else None


def compare(name: str, category: str, candidate: np.ndarray, reference: np.ndarray, tol: Tolerance,
            note: str = "", scale: float | None = None, memo: SumsMemo | None = None) -> Comparison:
    """Compare `candidate` with `reference` in one dtype: ||diff|| <= rtol * scale of the reference.

    A float64 difference that is one uniform factor within a float32 ulp of 1
    is a framework holding a constant in float32 (not a port bug): it passes,
    and the note says so. `memo` reuses the sums of the same arrays compared the other way round.
    """
    a, b = _numeric(candidate), _numeric(reference)
    if a.shape != b.shape:
        return _precheck(name, category, a, b, tol, note)
    return _verdict(name, category, a, b, _measured(memo.pair(a, b) if memo else pair_sums(a, b)), tol, note,
                    scale)


def _verdict(name: str, category: str, a: np.ndarray, b: np.ndarray, m: _Measured, tol: Tolerance, note: str,
             scale: float | None) -> Comparison:
    """`compare`'s verdict on a against b (same shape), given their measurements."""
    if not (math.isfinite(m.error) and math.isfinite(m.ref_norm)):  # a NaN or inf somewhere, or a huge value
        early = _precheck(name, category, a, b, tol, note)
        if early is not None:
            return early
    max_abs, norm_rel, cosine, error = m.max_abs, m.norm_rel, m.cosine, m.error
    limit, how = allowed_error(b, tol, scale, m.ref_norm)
    score = error / limit if limit > 0 else (0.0 if error == 0 else math.inf)
    passed = score <= 1.0
    if not passed and scale is not None and b.size and m.ref_norm > 0:
        how = _join(how, f"judged against the family scale {scale:.2e}")
    if not passed:
        offset = uniform_offset(a, b, tol.rtol)
        if offset is not None and 0 < abs(offset) <= FLOAT32_CONSTANT_OFFSET:
            passed = True
            how = _join(how, f"known framework rounding: a uniform factor 1{offset:+.2e}, a constant held in "
                             f"float32 (e.g. paddle's average-pool backward multiplies by float32(1/N))")
    return Comparison(name, category, max_abs, norm_rel, cosine, passed, _join(note, how), tol.atol, tol.rtol,
                      score)


def judge(name: str, category: str, reference: np.ndarray, candidate: np.ndarray, reference64: np.ndarray,
          candidate64: np.ndarray, tol: Tolerance, note: str = "", scale: float | None = None,
          memo: SumsMemo | None = None) -> Comparison:
    """The float32 verdict on one tensor, sound in both directions.

    `reference`/`candidate` are the two frameworks' float32 results;
    `reference64`/`candidate64` each framework's own float64 result for the
    same float32-valued weights and input (its exact answer, to float64
    rounding). Pass when
      1. the float64 results agree: ||c64 - r64|| <= rtol * scale (the twins
         compute the same function; float32 rounding cannot hide a bug here), and
      2. neither float32 result is more than ACCURACY_FACTOR times further from
         its own float64 result than the other is (or than rtol * scale):
         whichever framework rounds worse, the verdict is the same in both
         directions, and float32-only arithmetic defects still fail.
    The reported max abs / norm rel are the float32 difference a user sees. `memo`
    reuses the sums of the same arrays compared the other way round.
    """
    a, b, a64, b64 = (_numeric(v) for v in (candidate, reference, candidate64, reference64))
    early = _precheck(name, category, a, b, tol, note) if a.shape != b.shape else None
    if early is not None:
        return early
    if a64.shape != b64.shape or a64.shape != a.shape:
        exact = compare(name, category, a64, b64, tol, scale=scale)
        if not exact.shape_mismatch:
            exact = _precheck(name, category, a64, a, tol, "")
        return dataclasses.replace(exact, note=_join(note, "float64 results: " + exact.note))
    sums = memo.judged(a, b, a64, b64) if memo else judged_sums(a, b, a64, b64)
    single = _measured(sums.single)
    if not (math.isfinite(single.error) and math.isfinite(single.ref_norm)):
        early = _precheck(name, category, a, b, tol, note)
        if early is not None:
            return early
    max_abs, norm_rel, cosine = single.max_abs, single.norm_rel, single.cosine
    double = _measured(sums.double)
    exact = _verdict(name, category, a64, b64, double, tol, "", scale)
    if exact.shape_mismatch or not math.isfinite(exact.score):
        return dataclasses.replace(exact, max_abs=max_abs, norm_rel=norm_rel, cosine=cosine,
                                   note=_join(note, "float64 results: " + exact.note))
    e_ref, e_cand = sums.reference_rounding, sums.candidate_rounding
    floor, _ = allowed_error(b64, tol, scale, double.ref_norm)
    floor = max(floor, FLOAT32_ROUNDING_FLOOR * max(double.ref_norm, scale or 0.0))
    worse, better = max(e_ref, e_cand), min(e_ref, e_cand)
    budget = ACCURACY_FACTOR * max(better, floor)
    accuracy = worse / budget if budget > 0 else (0.0 if worse == 0 else math.inf)
    size = max(double.ref_norm, scale or 0.0) or 1.0
    parts = [note, f"float64 results differ by {double.error / size:.1e} of scale (allowed {tol.rtol:.1e})",
             f"float32 rounding: reference {e_ref / size:.1e}, candidate {e_cand / size:.1e}"]
    if accuracy > 1:
        side = "candidate" if e_cand >= e_ref else "reference"
        parts.append(f"the {side}'s float32 result is {worse / max(better, floor):.0f}x less accurate than "
                     f"rounding explains (allowed {ACCURACY_FACTOR:g}x)")
    if exact.note:
        parts.append(exact.note)
    truth_score = exact.score if not exact.passed else min(exact.score, 1.0)
    return Comparison(name, category, max_abs, norm_rel, cosine, exact.passed and accuracy <= 1, _join(*parts),
                      tol.atol, tol.rtol, max(truth_score, accuracy), exact.passed)


def within_rounding_budget(result: Comparison, candidate: np.ndarray, reference: np.ndarray, exact: np.ndarray,
                           factor: float) -> Comparison:
    """The earlier one-sided float32 budget, kept for `align` until it moves to `judge`.

    A failing tensor passes when the candidate's distance to `exact` (the
    reference framework's float64 result) is within `factor` times the
    reference's own. One-sided: it fails equivalent twins when the candidate
    framework rounds worse; `judge` is the sound rule.
    """
    if result.passed or result.shape_mismatch:
        return result
    exact64 = np.asarray(exact, dtype=np.float64)
    candidate_error = _norm(np.asarray(candidate, dtype=np.float64) - exact64)
    reference_error = _norm(np.asarray(reference, dtype=np.float64) - exact64)
    passed = candidate_error <= factor * reference_error
    note = (f"{'within' if passed else 'outside'} rounding budget: error vs float64 {candidate_error:.2e}, "
            f"reference's own {reference_error:.2e} (x{factor:g} allowed)")
    return dataclasses.replace(result, passed=passed, note=_join(result.note, note))


def compare_either(name: str, category: str, candidate: np.ndarray, reference: np.ndarray, tol: Tolerance,
                   note: str = "") -> Comparison:
    """The earlier rule, max abs <= atol OR norm-rel <= rtol, kept for `align` until it passes family scales
    to `compare` / `judge`. Not sound: a large relative error on a small tensor passes on the absolute branch."""
    result = compare(name, category, candidate, reference, tol, note)
    if result.passed or result.shape_mismatch or not math.isfinite(result.max_abs):
        return result
    passed = result.max_abs <= tol.atol or result.norm_rel <= tol.rtol
    return dataclasses.replace(result, passed=passed)
