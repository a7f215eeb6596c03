"""Global context block (Cao et al., GCNet, ICCVW 2019): options and shape arithmetic shared by the twins.

context = sum_j softmax_j(W_k x_j) x_j  (or the spatial mean);
t(c) = W_2 ReLU(LN(W_1 c));  z = x * sigmoid(t_mul(context)) + t_add(context).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import math

from crossattn.options import Options, positive, require
from crossattn.registry import register

Pooling = Literal["attention", "avg"]
Fusion = Literal["add", "mul"]


@dataclasses.dataclass(frozen=True)
class GlobalContextOptions(Options):
    in_channels: int
    #: bottleneck factor r of the transform: C -> C/r -> C
    reduction: int = 16
    #: context modelling: softmax-weighted sum over positions (paper), or the plain spatial mean
    pooling: Pooling = "attention"
    #: how the transformed context meets x: `add` (paper), `mul` (x * sigmoid), or both (mul first)
    fusions: tuple[Fusion, ...] = ("add",)
    #: zero the last conv of the add transform, so the block starts as the identity; the mul
    #: transform is never zeroed (sigmoid(0) would halve x, not keep it)
    zero_init_last: bool = True
    #: epsilon of the transform's LayerNorm (timm's LayerNorm2d: 1e-6); both twins add it rounded
    #: to float32, as paddle holds it (the default is crossattn's LN_EPSILON)
    norm_epsilon: float = 1e-5

    def validate(self) -> None:
        positive(self.in_channels, "in_channels")
        positive(self.reduction, "reduction")
        require(self.in_channels % self.reduction == 0, "reduction",
                f"in_channels ({self.in_channels}) must be divisible by reduction ({self.reduction})")
        require(len(self.fusions) > 0, "fusions", "name at least one of 'add', 'mul'")
        require(len(set(self.fusions)) == len(self.fusions), "fusions",
                f"each fusion may appear once, got {list(self.fusions)}")
        require(math.isfinite(self.norm_epsilon) and self.norm_epsilon > 0, "norm_epsilon",
                f"must be a positive number, got {self.norm_epsilon}")

    @property
    def bottleneck(self) -> int:
        """Channels inside the transform, C/r."""
        return self.in_channels // self.reduction

    @property
    def norm_shape(self) -> list[int]:
        """LayerNorm over the whole [C/r, 1, 1] context vector, as the paper's transform."""
        return [self.bottleneck, 1, 1]

    @property
    def fuses_add(self) -> bool:
        return "add" in self.fusions

    @property
    def fuses_mul(self) -> bool:
        return "mul" in self.fusions

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == 4, "input_shape",
                f"the global context block takes 4-dimensional input (N, C, H, W), got {len(shape)} dimensions")
        require(shape[1] == self.in_channels, "input_shape",
                f"channel dimension {shape[1]} does not match in_channels {self.in_channels}")


register("global_context", "block", GlobalContextOptions, "blocks.global_context:GlobalContextBlock",
         "GCNet global context block: attention or average pooling, LayerNorm bottleneck, add/mul fusion")
