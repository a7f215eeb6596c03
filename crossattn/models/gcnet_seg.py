"""GCNet segmentation model (Cao et al., GCNet, ICCVW 2019; seed 003).

A dilated ResNet50 backbone (stages 3 and 4 dilated instead of strided: output
stride 8), a global context block on its last feature map, a 3x3 conv-BN-ReLU
head, bilinear upsampling by the output stride and a 3x3 classifier conv.
"""

from __future__ import annotations

import dataclasses

from crossattn.blocks.global_context import GlobalContextOptions, Pooling
from crossattn.errors import OptionError
from crossattn.models.resnet_parts import UnitPlan, plan_stages
from crossattn.options import Options, check_feature_map, positive
from crossattn.registry import register


@dataclasses.dataclass(frozen=True)
class GCNetSegOptions(Options):
    num_classes: int = 2
    in_channels: int = 3
    #: channels of the stem and of stage 1's bottlenecks; stages output width x (4, 8, 16, 32)
    width: int = 64
    #: bottleneck units per stage (ResNet50: 3, 4, 6, 3)
    stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    #: torchvision's replace_stride_with_dilation for stages 2..4; (false, true, true) gives output stride 8
    dilate: tuple[bool, bool, bool] = (False, True, True)
    #: channels of the 3x3 head conv
    head_channels: int = 512
    #: bottleneck factor of the global context block's transform
    gc_reduction: int = 16
    #: the global context block's context modelling: softmax attention (paper) or the spatial mean
    gc_pooling: Pooling = "attention"
    #: bilinear upsampling convention; the seed uses align_corners=True
    align_corners: bool = True

    def validate(self) -> None:
        positive(self.num_classes, "num_classes")
        positive(self.in_channels, "in_channels")
        positive(self.width, "width")
        for i, count in enumerate(self.stage_blocks):
            positive(count, f"stage_blocks[{i}]")
        positive(self.head_channels, "head_channels")
        try:
            self.global_context
        except OptionError as exc:
            raise OptionError(f"gc_{exc.key}" if exc.key in ("reduction", "pooling") else "width",
                              f"for the global context block on {self.backbone_channels} channels: "
                              f"{exc.message}") from None

    @property
    def stages(self) -> list[list[UnitPlan]]:
        widths = tuple(self.width * m for m in (1, 2, 4, 8))
        return plan_stages(self.width, widths, self.stage_blocks, "bottleneck", (False, *self.dilate))

    @property
    def backbone_channels(self) -> int:
        return self.width * 8 * 4

    @property
    def output_stride(self) -> int:
        """Input size / backbone output size: 32, halved by each dilated stage."""
        return 32 // 2 ** sum(self.dilate)

    @property
    def global_context(self) -> GlobalContextOptions:
        return GlobalContextOptions(in_channels=self.backbone_channels, reduction=self.gc_reduction,
                                    pooling=self.gc_pooling)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_feature_map(shape, self.in_channels, 2, "in_channels")


register("gcnet_seg", "model", GCNetSegOptions, "models.gcnet_seg:GCNetSeg",
         "GCNet segmentation: dilated ResNet50, global context block, conv head, bilinear x8 upsampling")
