"""GCNet segmentation model, PaddlePaddle twin of torch_impl/models/gcnet_seg.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.blocks.global_context import Pooling
from crossattn.models.gcnet_seg import GCNetSegOptions
from paddle_impl.blocks.global_context import GlobalContextBlock
from paddle_impl.layers import batch_norm, bilinear_resize
from paddle_impl.models.resnet_parts import make_stage, make_stem


class BilinearUpsample(nn.Layer):
    """Bilinear upsampling by an integer factor as two matmuls with float64-exact interpolation weights."""

    def __init__(self, scale_factor: int, align_corners: bool) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.align_corners = align_corners

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        height, width = x.shape[2], x.shape[3]
        return bilinear_resize(x, height * self.scale_factor, width * self.scale_factor, self.align_corners)

class GCNetSeg(nn.Layer):
    """backbone -> global context block -> 3x3 conv-BN-ReLU -> bilinear x output stride -> 3x3 classifier."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, width: int = 64,
                 stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
                 dilate: tuple[bool, bool, bool] = (False, True, True), head_channels: int = 512,
                 gc_reduction: int = 16, gc_pooling: Pooling = "attention", align_corners: bool = True) -> None:
        super().__init__()
        self.options = opts = GCNetSegOptions(
            num_classes=num_classes, in_channels=in_channels, width=width, stage_blocks=stage_blocks, dilate=dilate,
            head_channels=head_channels, gc_reduction=gc_reduction, gc_pooling=gc_pooling,
            align_corners=align_corners)
        self.stem = make_stem("imagenet", opts.in_channels, opts.width, bias=False)
        self.stages = nn.LayerList([make_stage(units, "bottleneck") for units in opts.stages])
        self.gc_block = GlobalContextBlock(**opts.global_context.kwargs())
        self.head = nn.Sequential(nn.Conv2D(opts.backbone_channels, opts.head_channels, kernel_size=3, padding=1),
                                  batch_norm(2, opts.head_channels), nn.ReLU(),
                                  BilinearUpsample(opts.output_stride, opts.align_corners))
        self.cls_seg = nn.Conv2D(opts.head_channels, opts.num_classes, kernel_size=3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.cls_seg(self.head(self.gc_block(x)))
