"""The one place equivalence tolerances are set (CLI flags override them per run).

Every bound is relative to a scale (see docs/equivalence.md, "The verdict"):

- A tensor passes when ||a - b|| <= rtol * scale. The scale is the tensor's own
  norm, or for a parameter gradient the largest gradient norm of the case: a
  conv bias feeding a train-mode BatchNorm has a gradient that is zero in
  exact arithmetic (the BN removes any per-channel shift) and rounding residue
  in both frameworks, which is judged against the gradients it sits among,
  never against its own noise.
- `atol` is used only where the reference is exactly zero everywhere (and the
  family scale is zero too): then max |a| <= atol.

In float64 the comparison is made directly. In float32 the verdict is taken on
the float64 results of both twins with the same (float32-valued) weights and
input, where rounding cannot hide a difference: they must agree within
`rtol`, and each framework's float32 result must be within its own rounding
of that (`ACCURACY_FACTOR`). See `compare.judge`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


#: about 10^7 float64 ulps: room for different summation orders, nothing else
FLOAT64 = Tolerance(atol=1e-9, rtol=1e-9)
#: float32 verdicts hold the twins' float64 results (same float32-valued weights and input)
#: to float64 standards, 10x looser than a float64 check: a bug whose effect is below
#: float32 resolution (a GCT epsilon of 1e-6 for 1e-5 moves outputs by 7e-8) is still a bug;
#: float32 rounding is judged separately, against each framework's own (ACCURACY_FACTOR)
FLOAT32 = Tolerance(atol=1e-9, rtol=1e-8)
DEFAULTS = {"float64": FLOAT64, "float32": FLOAT32}

#: a float32 result may be this many times further from its own float64 result than
#: the other framework's is (or than rtol * scale, whichever is larger) before its
#: rounding counts as a defect: the frameworks' float32 rounding differs by up to 727x
#: (measured: SE-ResNet-152's weight gradients on the large negative probe, torch the
#: worse); float16 arithmetic where float32 was asked is about 8192x (2^13) worse
ACCURACY_FACTOR = 1024.0

#: the least rounding a float32 result is granted before ACCURACY_FACTOR applies: one float32
#: epsilon of scale. A side whose float32 result happens to sit closer to its float64 result than
#: float32 can resolve (measured: torch's dilated-conv weight gradients on GCNet's positive probe,
#: 6e-9 of scale, against paddle's ordinary 6e-5) must not make the other side's ordinary rounding
#: a defect; float16 arithmetic (about 1e-3 of scale) stays far outside 1024 of these
FLOAT32_ROUNDING_FLOOR = 2.0 ** -23

#: a uniform relative offset no larger than this (one float32 ulp at 1) between
#: float64 results is recognised as a framework holding a constant in float32
#: (paddle's average-pool backward multiplies by float32(1/N)) rather than a bug
FLOAT32_CONSTANT_OFFSET = 2.0 ** -23


#: a direct comparison of two float32 results with no float64 runs at hand (convert's fast
#: verification of a written file). Not a sound verdict (an error of 1e-5 passes on the
#: absolute branch whatever the tensor's scale): no `check` or `diff` verdict uses it
FLOAT32_DIRECT = Tolerance(atol=1e-5, rtol=1e-5)

#: the earlier one-sided float32 budget (`compare.within_rounding_budget`), kept for
#: `align` until it judges with `compare.judge`
ROUNDING_BUDGET_FACTOR = 4.0


def tolerance_for(dtype: str) -> Tolerance:
    return DEFAULTS[dtype]
