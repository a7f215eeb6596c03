"""Gated channel transformation (Yang et al., CVPR 2020): options shared by the twins.

l2: s = alpha * sqrt(sum_hw x^2 + eps),  n = gamma / sqrt(mean_c s^2 + eps)
l1: s = alpha * sum_hw |x|,              n = gamma / (mean_c |s| + eps)
y = x * (1 + tanh(s * n + beta)).  alpha = 1, gamma = beta = 0 start the block as the identity.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.options import Options, check_feature_map, positive, require
from crossattn.registry import register

Mode = Literal["l2", "l1"]


@dataclasses.dataclass(frozen=True)
class GCTOptions(Options):
    channels: int
    #: embedding norm: l2 (default) or l1
    mode: Mode = "l2"
    #: l1 only: the input is known non-negative (after a ReLU), so |x| is skipped
    after_relu: bool = False
    #: added inside the square roots (l2) or to the l1 normaliser; a plain number, not a norm layer's eps
    epsilon: float = 1e-5

    def validate(self) -> None:
        positive(self.channels, "channels")
        require(self.epsilon > 0, "epsilon", f"must be > 0 (it keeps the normaliser finite), got {self.epsilon}")
        require(not self.after_relu or self.mode == "l1", "after_relu",
                f"skips |x| in mode l1; mode {self.mode} squares x and has no |x| to skip")

    @property
    def param_shape(self) -> tuple[int, int, int, int]:
        """Shape of alpha, gamma and beta: one value per channel, broadcast over N, H, W."""
        return (1, self.channels, 1, 1)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.channels, 2)


register("gct", "block", GCTOptions, "blocks.gct:GCTBlock",
         "Gated channel transformation: l2/l1 channel embedding, channel normalisation, tanh gate")
