"""SE-ResNet, PaddlePaddle twin of torch_impl/models/se_resnet.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.models.se_resnet import Depth, SEResNetOptions
from paddle_impl.blocks.se import SEBlock
from paddle_impl.models.resnet_parts import make_stage, make_stem


class SEResNet(nn.Layer):
    """ResNet (stem, four stages, global mean pool, Linear) whose every unit carries an SE block."""

    def __init__(self, depth: Depth = 50, num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                 se_reduction: int = 16) -> None:
        super().__init__()
        self.options = opts = SEResNetOptions(depth=depth, num_classes=num_classes, in_channels=in_channels,
                                              width=width, se_reduction=se_reduction)
        self.stem = make_stem("imagenet", opts.in_channels, opts.width, bias=False)
        self.stages = nn.LayerList([make_stage(units, opts.unit, attention=self._se) for units in opts.stages])
        self.fc = nn.Linear(opts.out_channels, opts.num_classes)

    def _se(self, channels: int) -> SEBlock:
        return SEBlock(**self.options.se(channels).kwargs())

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        # the mean written out: paddle's adaptive pooling backward holds 1/(H*W) in float32
        return self.fc(x.mean(axis=[2, 3]))
