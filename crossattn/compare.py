"""Element-by-element comparison of two tensors: max abs, norm-relative error, cosine."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from crossattn.tolerances import Tolerance


@dataclasses.dataclass(frozen=True)
class Comparison:
    tensor: str
    category: str  # output | input_grad | param_grad | running_stat | layer_output | layer_grad
    max_abs: float
    norm_rel: float
    cosine: float
    passed: bool
    note: str
    atol: float
    rtol: float

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @property
    def shape_mismatch(self) -> bool:
        return self.note.startswith("shape ")

    @property
    def severity(self) -> float:
        """Error in units of tolerance (the better of the two bounds): > 1 fails."""
        return min(_ratio(self.max_abs, self.atol), _ratio(self.norm_rel, self.rtol))


def _ratio(error: float, limit: float) -> float:
    if limit > 0:
        return error / limit
    return 0.0 if error == 0 else math.inf


def compare(name: str, category: str, candidate: np.ndarray, reference: np.ndarray, tol: Tolerance,
            note: str = "") -> Comparison:
    """Compare `candidate` with `reference` (the norm-relative denominator)."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        return Comparison(name, category, math.inf, math.inf, math.nan, False,
                          f"shape {list(a.shape)} vs reference {list(b.shape)}", tol.atol, tol.rtol)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        same = bool(np.array_equal(a, b, equal_nan=True))
        return Comparison(name, category, 0.0 if same else math.inf, 0.0 if same else math.inf, math.nan,
                          same, (note + "; " if note else "") + "non-finite values", tol.atol, tol.rtol)
    diff = a - b
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(b))
    diff_norm = float(np.linalg.norm(diff))
    if ref_norm > 0:
        norm_rel = diff_norm / ref_norm
    else:
        norm_rel = 0.0 if diff_norm == 0 else math.inf
    na, nb = float(np.linalg.norm(a)), ref_norm
    cosine = float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    passed = max_abs <= tol.atol or norm_rel <= tol.rtol
    return Comparison(name, category, max_abs, norm_rel, cosine, passed, note, tol.atol, tol.rtol)


def within_rounding_budget(result: Comparison, candidate: np.ndarray, reference: np.ndarray, exact: np.ndarray,
                           factor: float) -> Comparison:
    """Let a low-precision tensor that fails the plain bounds pass when it is as accurate as the reference.

    `exact` is the reference framework's float64 result for the same weights and
    input. The candidate passes when its distance to `exact` is within `factor`
    times the reference's own distance to it: the twin is as accurate as the
    original in that precision. This separates rounding (gradients that are
    zero in exact arithmetic, BatchNorm-amplified residues) from divergence.
    """
    if result.passed or result.shape_mismatch:
        return result
    exact64 = np.asarray(exact, dtype=np.float64)
    candidate_error = float(np.linalg.norm(np.asarray(candidate, dtype=np.float64) - exact64))
    reference_error = float(np.linalg.norm(np.asarray(reference, dtype=np.float64) - exact64))
    passed = candidate_error <= factor * reference_error
    note = (f"{'within' if passed else 'outside'} rounding budget: error vs float64 {candidate_error:.2e}, "
            f"reference's own {reference_error:.2e} (x{factor:g} allowed)")
    return dataclasses.replace(result, passed=passed, note=(result.note + "; " if result.note else "") + note)
