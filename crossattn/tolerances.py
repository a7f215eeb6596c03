"""The one place equivalence tolerances are set (CLI flags override them per run).

A tensor passes when its largest absolute difference is within `atol`, or its
norm-relative error ||a - b|| / ||ref|| is within `rtol`. The absolute bound
serves tensors near zero, where any relative measure is noise; the
norm-relative bound serves large tensors, where rounding grows with magnitude.

Checks run in float64 by default. In float32 some gradients are pure rounding
noise in *both* frameworks: a conv bias feeding a train-mode BatchNorm has a
gradient that is exactly zero in exact arithmetic (the BN removes any
per-channel shift), and float32 leaves residues up to 1e-2 whose difference
says nothing about the twins. In float64 such residues are ~1e-13, so tight
bounds separate rounding from real divergence: a wrong epsilon, axis, divisor
or transposed weight lands many orders of magnitude outside.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


#: about 10^5 float64 ulps at unit scale: room for different summation orders only
FLOAT64 = Tolerance(atol=1e-9, rtol=1e-9)
#: about 100 float32 ulps at unit scale
FLOAT32 = Tolerance(atol=1e-5, rtol=1e-5)
DEFAULTS = {"float64": FLOAT64, "float32": FLOAT32}


#: float32 checks also run the reference framework in float64; a tensor outside the
#: bounds above still passes when the candidate is within this factor of the
#: reference's own float32 error against that float64 result (see
#: compare.within_rounding_budget): as accurate as the original, not equal to it
ROUNDING_BUDGET_FACTOR = 4.0


def tolerance_for(dtype: str) -> Tolerance:
    return DEFAULTS[dtype]
