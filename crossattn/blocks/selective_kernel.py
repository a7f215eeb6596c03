"""Selective Kernel convolution (Li et al., CVPR 2019): options and shape arithmetic shared by the twins.

U_i = ReLU(BN(conv3x3_dilation(1+i)(x)));  z = ReLU(BN1d(W_c GAP(sum_i U_i)));
a_i = softmax over paths of (A_i z) (+ b_i with `select_bias`, the seed's layers);  V = sum_i a_i * U_i.
"""

from __future__ import annotations

import dataclasses

from crossattn.options import Options, positive, require
from crossattn.registry import register

KERNEL_SIZE = 3


@dataclasses.dataclass(frozen=True)
class SelectiveKernelOptions(Options):
    in_channels: int
    #: channels of every path and of the output; None -> in_channels
    out_channels: int | None = None
    stride: int = 1
    #: number of paths M; path i is a 3x3 conv with dilation 1 + i (receptive field 3 + 2i)
    paths: int = 2
    #: groups of every path's conv; must divide in_channels and out_channels
    groups: int = 32
    #: r in d = max(C / r, L)
    reduction: int = 16
    #: L in d = max(C / r, L): the smallest width of the compressed descriptor z
    min_dim: int = 32
    #: a bias in each path's selection layer A_i z + b_i: the seed's 1x1 convs carry one; the
    #: paper's (Eq. 5) and the authors' selection matrices do not
    select_bias: bool = False
    #: split the input channels evenly across the paths (path i convolves its own share to all
    #: out_channels), as timm's SelectiveKernel does by default; false: every path sees all of x
    split_input: bool = False

    def validate(self) -> None:
        for key in ("in_channels", "out_channels", "stride", "paths", "groups", "reduction", "min_dim"):
            positive(getattr(self, key), key)
        require(not self.split_input or self.in_channels % self.paths == 0, "split_input",
                f"splits in_channels ({self.in_channels}) evenly across {self.paths} paths: they must divide")
        require(self.path_in_channels % self.groups == 0, "groups",
                f"groups ({self.groups}) must divide in_channels ({self.in_channels})" if not self.split_input else
                f"groups ({self.groups}) must divide each path's share of the input ({self.path_in_channels})")
        require(self.channels % self.groups == 0, "groups",
                f"groups ({self.groups}) must divide out_channels ({self.channels})")

    @property
    def channels(self) -> int:
        """Channels of every path and of the output."""
        return self.out_channels if self.out_channels is not None else self.in_channels

    @property
    def path_in_channels(self) -> int:
        """Input channels of each path's conv: all of them, or an even share with split_input."""
        return self.in_channels // self.paths if self.split_input else self.in_channels

    @property
    def reduced_dim(self) -> int:
        """d = max(C // r, L), the width of the compressed descriptor z."""
        return max(self.channels // self.reduction, self.min_dim)

    def dilation(self, path: int) -> int:
        """Path i dilates its 3x3 kernel by 1 + i; padding equal to the dilation keeps all paths the same size."""
        return 1 + path

    def output_size(self, size: int) -> int:
        return (size - 1) // self.stride + 1

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == 4, "input_shape",
                f"a selective kernel conv takes 4-dimensional input (N, C, H, W), got {len(shape)} dimensions")
        require(shape[1] == self.in_channels, "input_shape",
                f"channel dimension {shape[1]} does not match in_channels {self.in_channels}")
        require(shape[0] >= 2, "input_shape",
                "the compression's BatchNorm1d normalises over the batch; training needs a batch of at least 2")


register("selective_kernel", "block", SelectiveKernelOptions, "blocks.selective_kernel:SelectiveKernelConv",
         "Selective Kernel conv: dilated 3x3 paths mixed by a per-channel softmax across paths")
