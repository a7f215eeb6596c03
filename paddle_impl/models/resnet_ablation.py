"""ResNet18 ablation family, PaddlePaddle twin of torch_impl/models/resnet_ablation.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.models.resnet_ablation import Projection, ResNetAblationOptions
from crossattn.models.resnet_parts import Stem
from crossattn.spec import Spec
from paddle_impl.models.resnet_parts import build_block, make_stage, make_stem


class ResNetAblation(nn.Layer):
    """Stem, BasicBlock stages, the optional block after stage `attention_stage`, global mean pool, Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, stem: Stem = "imagenet",
                 widths: tuple[int, ...] = (64, 128, 256, 512), stage_blocks: tuple[int, ...] = (2, 2, 2, 2),
                 extra_block_stage: int | None = None, projection: Projection = "conv", conv_bias: bool = True,
                 attention: Spec | dict | None = None, attention_stage: int = 3) -> None:
        super().__init__()
        self.options = opts = ResNetAblationOptions(
            num_classes=num_classes, in_channels=in_channels, stem=stem, widths=widths, stage_blocks=stage_blocks,
            extra_block_stage=extra_block_stage, projection=projection, conv_bias=conv_bias, attention=attention,
            attention_stage=attention_stage)
        self.stem = make_stem(opts.stem, opts.in_channels, opts.widths[0], opts.conv_bias)
        self.stages = nn.LayerList([make_stage(units, "basic", opts.conv_bias, opts.projection)
                                     for units in opts.stages])
        self.attention = build_block("attention", opts.attention) if opts.attention is not None else None
        self.fc = nn.Linear(opts.widths[-1], opts.num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for number, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if number == self.options.attention_stage and self.attention is not None:
                x = self.attention(x)
        # the mean written out: paddle's adaptive pooling backward holds 1/(H*W) in float32
        return self.fc(x.mean(axis=[2, 3]))
