"""ResNet18 ablation family (seed 004): a ResNet with one block inserted after a stage.

The baseline is ResNet18 with one extra residual unit in stage 3; each variant
replaces that unit with an attention block (any registered block) after stage 3,
so a gain comes from the block rather than from added parameters.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from crossattn.models.nested import check_block_fits, check_block_input, parse_block, with_channels
from crossattn.models.resnet_parts import Stem, UnitPlan, plan_stages, stage_sizes
from crossattn.options import Options, positive, require
from crossattn.registry import register
from crossattn.spec import Spec

Projection = Literal["conv", "conv_bn"]


@dataclasses.dataclass(frozen=True)
class ResNetAblationOptions(Options):
    image_classifier: ClassVar[bool] = True
    num_classes: int = 10
    in_channels: int = 3
    #: 7x7/2 conv + 3x3/2 max-pool (seed 004, `imagenet`) or a 3x3/1 conv without pooling (`cifar`)
    stem: Stem = "imagenet"
    #: channels of each stage; the stem has widths[0]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    #: residual units per stage (ResNet18: 2, 2, 2, 2)
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    #: stage (1-based) given one more unit: seed 004's baseline uses 3; null for none
    extra_block_stage: int | None = None
    #: shortcut when the shape changes: a bare 1x1 conv (seed 004) or 1x1 conv + BatchNorm (torchvision)
    projection: Projection = "conv"
    #: every conv carries a bias, as seed 004's paddle default does (redundant before BatchNorm)
    conv_bias: bool = True
    #: block inserted after stage `attention_stage`; its channel option is filled in when left out
    attention: Spec | None = None
    #: stage (1-based) after which `attention` runs
    attention_stage: int = 3

    def __post_init__(self) -> None:
        # Parse the nested spec before the generic coercion so its errors keep their key path; the fields
        # its channel count is read from are checked first, so their errors name them.
        self.coerce_early("widths", "attention_stage")
        attention = with_channels(self.attention, self._stage_width_or_none())
        object.__setattr__(self, "attention", parse_block("attention", attention))
        super().__post_init__()

    def _stage_width_or_none(self) -> int | None:
        try:
            return self.widths[self.attention_stage - 1] if self.attention_stage >= 1 else None
        except (TypeError, IndexError):
            return None  # the field checks below report the bad value

    def validate(self) -> None:
        positive(self.num_classes, "num_classes")
        positive(self.in_channels, "in_channels")
        require(len(self.widths) > 0, "widths", "give at least one stage width")
        for i, width in enumerate(self.widths):
            positive(width, f"widths[{i}]")
        require(len(self.stage_blocks) == len(self.widths), "stage_blocks",
                f"one count per stage: {len(self.widths)} widths but {len(self.stage_blocks)} counts")
        for i, count in enumerate(self.stage_blocks):
            positive(count, f"stage_blocks[{i}]")
        stages = len(self.widths)
        require(self.extra_block_stage is None or 1 <= self.extra_block_stage <= stages, "extra_block_stage",
                f"must be a stage number 1..{stages} or null, got {self.extra_block_stage}")
        require(1 <= self.attention_stage <= stages, "attention_stage",
                f"must be a stage number 1..{stages}, got {self.attention_stage}")
        if self.attention is not None:
            check_block_fits("attention", self.attention, self.widths[self.attention_stage - 1],
                             f"of stage {self.attention_stage}")

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        """Units per stage, the extra unit included."""
        return tuple(count + (1 if index + 1 == self.extra_block_stage else 0)
                     for index, count in enumerate(self.stage_blocks))

    @property
    def stages(self) -> list[list[UnitPlan]]:
        return plan_stages(self.widths[0], self.widths, self.blocks_per_stage, "basic")

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        require(len(shape) == 4, "input_shape", f"the network takes (N, C, H, W) images, got {len(shape)} dimensions")
        require(shape[1] == self.in_channels, "input_shape",
                f"channel dimension {shape[1]} does not match in_channels {self.in_channels}")
        if self.attention is not None:
            heights = stage_sizes(shape[2], self.stem, self.stages)
            widths = stage_sizes(shape[3], self.stem, self.stages)
            stage = self.attention_stage - 1
            feature = (shape[0], self.widths[stage], heights[stage], widths[stage])
            check_block_input("attention", self.attention, feature, f"after stage {self.attention_stage}")


register("resnet_ablation", "model", ResNetAblationOptions, "models.resnet_ablation:ResNetAblation",
         "ResNet18 ablation (seed 004): BasicBlock ResNet with an optional block inserted after a stage")
