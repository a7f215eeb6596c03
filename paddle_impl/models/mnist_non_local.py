"""MNIST non-local net, PaddlePaddle twin of torch_impl/models/mnist_non_local.py."""

from __future__ import annotations

import paddle
from paddle import nn

from crossattn.blocks.non_local import Mode
from crossattn.models.mnist_non_local import MnistNonLocalOptions
from paddle_impl.blocks.non_local import NonLocalBlock
from paddle_impl.layers import batch_norm


def conv_stage(in_channels: int, out_channels: int) -> list[nn.Layer]:
    """3x3 conv (padding 1), BatchNorm, ReLU, 2x2 max-pool."""
    return [nn.Conv2D(in_channels, out_channels, kernel_size=3, padding=1), batch_norm(2, out_channels), nn.ReLU(),
            nn.MaxPool2D(kernel_size=2, stride=2)]


class MnistNonLocal(nn.Layer):
    """convs: stage, non-local, stage, non-local, stage; fc: Linear, ReLU, Dropout, Linear (seed 000's layout)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: tuple[int, int] = (28, 28),
                 widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 256, dropout: float = 0.5,
                 mode: Mode = "embedded_gaussian", sub_sample: bool = True, bn_layer: bool = True) -> None:
        super().__init__()
        self.options = opts = MnistNonLocalOptions(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, widths=widths, hidden=hidden,
            dropout=dropout, mode=mode, sub_sample=sub_sample, bn_layer=bn_layer)
        c1, c2, c3 = opts.widths
        self.convs = nn.Sequential(*conv_stage(opts.in_channels, c1), NonLocalBlock(**opts.non_local(0).kwargs()),
                                   *conv_stage(c1, c2), NonLocalBlock(**opts.non_local(1).kwargs()),
                                   *conv_stage(c2, c3))
        self.fc = nn.Sequential(nn.Linear(opts.fc_in, opts.hidden), nn.ReLU(), nn.Dropout(opts.dropout),
                                nn.Linear(opts.hidden, opts.num_classes))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(self.convs(x).flatten(1))
