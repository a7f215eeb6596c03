"""MNIST classifier with two non-local blocks (seed 000).

Three conv-BN-ReLU-maxpool stages; a non-local block follows each of the first
two; then Linear-ReLU-Dropout-Linear on the flattened features.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from crossattn.blocks.non_local import Mode, NonLocalOptions
from crossattn.errors import OptionError
from crossattn.options import Options, positive, require
from crossattn.registry import register


@dataclasses.dataclass(frozen=True)
class MnistNonLocalOptions(Options):
    image_classifier: ClassVar[bool] = True
    num_classes: int = 10
    in_channels: int = 1
    #: (H, W) of the input images; fixes the first Linear layer's width
    image_size: tuple[int, int] = (28, 28)
    #: output channels of the three conv stages; the non-local blocks take the first two
    widths: tuple[int, int, int] = (32, 64, 128)
    #: width of the hidden Linear layer
    hidden: int = 256
    #: dropout after the hidden layer (seed: 0.5); training-mode dropout is random, so checks use 0
    dropout: float = 0.5
    #: pairwise function of both non-local blocks
    mode: Mode = "embedded_gaussian"
    #: max-pool phi and g inside the non-local blocks
    sub_sample: bool = True
    #: W is conv + BatchNorm (True) or a bare conv
    bn_layer: bool = True

    def validate(self) -> None:
        positive(self.num_classes, "num_classes")
        positive(self.in_channels, "in_channels")
        for i, size in enumerate(self.image_size):
            positive(size, f"image_size[{i}]")
        for i, width in enumerate(self.widths):
            positive(width, f"widths[{i}]")
        positive(self.hidden, "hidden")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(all(s >= 1 for s in self.feature_size), "image_size",
                f"three 2x2 max-pools leave nothing of {list(self.image_size)}; give at least 8x8 "
                "(which also leaves the non-local blocks' sub-sampling at least 2x2)")
        for i in range(2):
            try:
                self.non_local(i)
            except OptionError as exc:
                raise OptionError(f"widths[{i}]", f"as the non-local block's in_channels: {exc.message}") from None

    @property
    def stage_sizes(self) -> tuple[tuple[int, int], ...]:
        """(H, W) after each stage's 2x2 max-pool."""
        sizes, (h, w) = [], self.image_size
        for _ in range(3):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return tuple(sizes)

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.stage_sizes[-1]

    @property
    def fc_in(self) -> int:
        """Width of the flattened features: channels x H/8 x W/8 (128 x 3 x 3 for 28x28 MNIST)."""
        return self.widths[2] * self.feature_size[0] * self.feature_size[1]

    def non_local(self, index: int) -> NonLocalOptions:
        """Options of the non-local block after stage `index` (0 or 1)."""
        return NonLocalOptions(in_channels=self.widths[index], mode=self.mode, sub_sample=self.sub_sample,
                               bn_layer=self.bn_layer)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == 4, "input_shape", f"the network takes (N, C, H, W) images, got {len(shape)} dimensions")
        require(tuple(shape[1:]) == (self.in_channels, *self.image_size), "input_shape",
                f"expected (N, {self.in_channels}, {self.image_size[0]}, {self.image_size[1]}) from in_channels "
                f"and image_size, got {list(shape)}")


register("mnist_non_local", "model", MnistNonLocalOptions, "models.mnist_non_local:MnistNonLocal",
         "MNIST conv net with two non-local blocks (seed 000)")
