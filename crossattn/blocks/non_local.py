"""Non-local block (Wang et al., CVPR 2018): options and shape arithmetic shared by the twins.

y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j);  z = W y + x.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from crossattn.options import Options, positive, require
from crossattn.registry import register

Mode = Literal["embedded_gaussian", "gaussian", "dot_product", "concatenation"]
Affinity = Literal["positions", "channels"]
ScaleBy = Literal["inter_channels", "in_channels"]
AttentionImpl = Literal["explicit", "fused", "auto"]
#: modes with a memory-linear form: softmax attention, and the dot product reassociated
FUSED_MODES = ("embedded_gaussian", "gaussian", "dot_product")


@dataclasses.dataclass(frozen=True)
class NonLocalOptions(Options):
    in_channels: int
    #: channels of theta/phi/g; None -> in_channels // reduction (at least 1)
    inter_channels: int | None = None
    #: bottleneck factor; 1 is seed 004's "no bottleneck" variant
    reduction: int = 2
    mode: Mode = "embedded_gaussian"
    dimension: Literal[1, 2, 3] = 2
    #: max-pool phi and g (kernel 2; (1, 2, 2) in 3-D), quartering the pairwise matrix in 2-D
    sub_sample: bool = True
    #: W is conv + BatchNorm (True) or a bare conv (False)
    bn_layer: bool = True
    #: divide the embedded-gaussian affinity by sqrt(C) before the softmax
    use_scale: bool = False
    #: the C of use_scale: the embedding width inter_channels (mmcv) or the block's in_channels
    #: (the NonLocalAttn of timm)
    scale_by: ScaleBy = "inter_channels"
    #: start as the identity: zero the last BN (or W's conv without BN). Seed 004
    #: leaves the BN of its gaussian / dot-product blocks at one: zero_init=false.
    zero_init: bool = True
    #: dot-product / concatenation divisor: number of key positions N (paper), or
    #: seed 004's dot-product code dividing by the input height H
    normalize_by: Literal["positions", "height"] = "positions"
    #: what the affinity relates: every pair of positions, an N x N matrix (paper), or every
    #: pair of embedding channels, a C' x C' matrix theta phi^T contracted over positions
    #: (seed 004's code)
    affinity: Affinity = "positions"
    #: how a position affinity is computed: `explicit` writes the N x Nk matrix out; `fused`
    #: never does (softmax modes: torch's flash kernel, paddle's chunked online softmax; dot
    #: product: theta^T (phi g^T) / C(x)), so memory stays linear in N; `auto` fuses where the
    #: mode allows it (not concatenation, not a channel affinity) and is explicit elsewhere
    attention_impl: AttentionImpl = "explicit"

    def validate(self) -> None:
        positive(self.in_channels, "in_channels")
        positive(self.inter_channels, "inter_channels")
        positive(self.reduction, "reduction")
        require(self.inter_channels is None or self.reduction == 2, "reduction",
                "give either inter_channels or reduction, not both")
        require(self.in_channels % self.reduction == 0 or self.inter_channels is not None, "reduction",
                f"in_channels ({self.in_channels}) must be divisible by reduction ({self.reduction})")
        require(not self.use_scale or self.mode == "embedded_gaussian", "use_scale",
                f"applies to mode embedded_gaussian only, not {self.mode}")
        require(self.normalize_by == "positions" or self.mode == "dot_product", "normalize_by",
                "`height` reproduces seed 004's dot-product divisor; it applies to mode dot_product only")
        require(self.scale_by == "inter_channels" or self.use_scale, "scale_by",
                "chooses the divisor of use_scale; set use_scale: true as well")
        require(self.attention_impl != "fused" or self.mode in FUSED_MODES, "attention_impl",
                f"`fused` covers modes {', '.join(FUSED_MODES)}; concatenation's ReLU pairs have no fused "
                "form: use `explicit` (or `auto`, which falls back to it)")
        require(self.attention_impl != "fused" or self.affinity == "positions", "attention_impl",
                "`fused` avoids the N x N position affinity; a channel affinity is only C' x C': use `explicit`")
        if self.affinity == "channels":
            require(self.mode != "concatenation", "affinity",
                    "`channels` relates embedding channels by their dot product; mode concatenation has no "
                    "channel form")
            require(not self.sub_sample, "affinity",
                    "`channels` contracts theta and phi over the same positions and maps g back onto them: "
                    "set sub_sample: false")
            require(not self.use_scale, "affinity",
                    "use_scale scales a position affinity; it does not apply to `channels`")
            require(self.mode != "gaussian" or self.inter == self.in_channels, "affinity",
                    f"a gaussian channel affinity is in_channels x in_channels ({self.in_channels}), so g "
                    f"must keep all channels: set reduction: 1 (inter is {self.inter})")

    @property
    def inter(self) -> int:
        """Channels of the embeddings theta, phi and g."""
        if self.inter_channels is not None:
            return self.inter_channels
        return max(self.in_channels // self.reduction, 1)

    @property
    def embeds_theta_phi(self) -> bool:
        """The gaussian instantiation compares raw features: no theta/phi convs."""
        return self.mode != "gaussian"

    @property
    def fused(self) -> bool:
        """Whether the position affinity takes the memory-linear path."""
        if self.attention_impl == "explicit":
            return False
        return self.mode in FUSED_MODES and self.affinity == "positions"

    @property
    def scale(self) -> float:
        """Factor on the embedded-gaussian logits: 1, or 1/sqrt(C) with use_scale."""
        if not self.use_scale:
            return 1.0
        channels = self.in_channels if self.scale_by == "in_channels" else self.inter
        return 1.0 / float(channels) ** 0.5

    @property
    def pool_kernel(self) -> tuple[int, ...]:
        return {1: (2,), 2: (2, 2), 3: (1, 2, 2)}[self.dimension]

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == self.dimension + 2, "input_shape",
                f"a {self.dimension}-D block takes {self.dimension + 2}-dimensional input "
                f"(N, C, {('L', 'H, W', 'T, H, W')[self.dimension - 1]}), got {len(shape)} dimensions")
        require(shape[1] == self.in_channels, "input_shape",
                f"channel dimension {shape[1]} does not match in_channels {self.in_channels}")
        if self.sub_sample:
            spatial = shape[2:] if self.dimension != 3 else shape[3:]
            require(all(s >= 2 for s in spatial), "input_shape",
                    f"sub_sample halves the spatial size; {shape[2:]} is too small")


def pairwise_divisor(options: NonLocalOptions, input_shape: tuple[int, ...], key_positions: int) -> float:
    """C(x) for dot product and concatenation: N key positions, or H for seed 004's dot product.

    A channel affinity keeps every position (no sub-sampling): N is then the input's H*W (T*H*W, L).
    """
    if options.normalize_by == "height":
        return float(input_shape[2])
    return float(key_positions)


register("non_local", "block", NonLocalOptions, "blocks.non_local:NonLocalBlock",
         "Non-local block: gaussian, embedded gaussian, dot product or concatenation pairwise function")
