"""Attentional feature fusion (Dai et al., WACV 2021): options and shape rules shared by the twins.

MS-CAM: M(X) = sigmoid(L(X) + G(X)), L a pointwise bottleneck on every position, G the same bottleneck
on the global average pool (broadcast back). Fusion of x and a residual r:
  daf:  x + r
  aff:  s x M(x + r) + s r (1 - M(x + r))       (s = 2 in the released code)
  iaff: x M2(xi) + r (1 - M2(xi)),  xi = x M1(x + r) + r (1 - M1(x + r))

Fusion blocks take two tensors. A spec feeds one, so `paired_input: true` lets
the block take the pair stacked along channels, (N, 2C, H, W) = [x | r], and
split it; the checked input gradient then holds the gradients of x and r.
"""

from __future__ import annotations

import dataclasses

from crossattn.options import Options, positive, require
from crossattn.registry import register


@dataclasses.dataclass(frozen=True)
class MSCAMOptions(Options):
    channels: int
    #: bottleneck factor r of both branches: C -> C / r -> C
    reduction: int = 4

    def validate(self) -> None:
        positive(self.channels, "channels")
        positive(self.reduction, "reduction")
        require(self.channels % self.reduction == 0, "reduction",
                f"channels ({self.channels}) must be divisible by reduction ({self.reduction})")

    @property
    def inter_channels(self) -> int:
        """Width of the local and global bottlenecks."""
        return self.channels // self.reduction

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_feature_map(shape, self.channels, f"channels {self.channels}")
        _check_batch_statistics(shape)


@dataclasses.dataclass(frozen=True)
class DirectAddFusionOptions(Options):
    channels: int
    #: forward(x) takes [x | residual] stacked along channels, (N, 2C, H, W)
    paired_input: bool = False

    def validate(self) -> None:
        positive(self.channels, "channels")

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_pair(shape, self.channels, self.paired_input)


@dataclasses.dataclass(frozen=True)
class AttentionalFusionOptions(MSCAMOptions):
    #: forward(x) takes [x | residual] stacked along channels, (N, 2C, H, W)
    paired_input: bool = False
    #: s in s x M + s r (1 - M): 2 as in the released code and the seed, 1 as in the paper's equation
    fusion_scale: float = 2.0

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_pair(shape, self.channels, self.paired_input)
        _check_batch_statistics(shape)


@dataclasses.dataclass(frozen=True)
class IterativeAttentionalFusionOptions(MSCAMOptions):
    #: forward(x) takes [x | residual] stacked along channels, (N, 2C, H, W)
    paired_input: bool = False
    #: the second stage reuses the first stage's global branch, as the seed's code does;
    #: false (the paper) gives the second stage its own global branch
    reuse_global: bool = False

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_pair(shape, self.channels, self.paired_input)
        _check_batch_statistics(shape)


def splits_pair(paired_input: bool, residual_given: bool) -> bool:
    """Whether forward must split its single input into x and residual."""
    if residual_given:
        return False
    if not paired_input:
        raise TypeError("a fusion block needs a residual: call forward(x, residual), "
                        "or build it with paired_input=True and pass [x | residual] stacked along channels")
    return True


def _check_feature_map(shape: tuple[int, ...], channels: int, expected: str) -> None:
    require(len(shape) == 4, "input_shape",
            f"the block takes 4-dimensional input (N, C, H, W), got {len(shape)} dimensions")
    require(shape[1] == channels, "input_shape", f"channel dimension {shape[1]} does not match {expected}")


def _check_pair(shape: tuple[int, ...], channels: int, paired_input: bool) -> None:
    require(paired_input, "input_shape",
            "a fusion block takes two tensors (x, residual); a spec feeds one, so set `paired_input: true` "
            "and give input_shape (N, 2 * channels, H, W)")
    _check_feature_map(shape, 2 * channels, f"2 * channels = {2 * channels} (x and residual stacked)")


def _check_batch_statistics(shape: tuple[int, ...]) -> None:
    require(shape[0] >= 2, "input_shape",
            "the global branch's BatchNorm sees one value per channel per sample; training needs a batch of at "
            "least 2")


register("ms_cam", "block", MSCAMOptions, "blocks.attentional_fusion:MSCAM",
         "Multi-scale channel attention: x * sigmoid(local + global pointwise bottlenecks)")
register("daf", "block", DirectAddFusionOptions, "blocks.attentional_fusion:DirectAddFusion",
         "Direct addition fusion x + residual (the attentional-fusion baseline; no parameters)")
register("aff", "block", AttentionalFusionOptions, "blocks.attentional_fusion:AttentionalFusion",
         "Attentional feature fusion: MS-CAM weights mix x and residual")
register("iaff", "block", IterativeAttentionalFusionOptions, "blocks.attentional_fusion:IterativeAttentionalFusion",
         "Iterative attentional feature fusion: a second MS-CAM, fed a first fusion, mixes x and residual")
