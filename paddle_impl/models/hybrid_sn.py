"""HybridSN, PaddlePaddle twin of torch_impl/models/hybrid_sn.py."""

from __future__ import annotations

import paddle
from paddle import nn
from paddle.nn import functional as F

from crossattn.models.hybrid_sn import HybridSNOptions, Variant
from paddle_impl.blocks.se import SEBlock
from paddle_impl.layers import batch_norm, conv_nd


def conv_unit(dimension: int, in_channels: int, out_channels: int, kernel: tuple[int, ...],
              with_batch_norm: bool) -> nn.Sequential:
    """Valid (unpadded) conv, optional BatchNorm, ReLU."""
    conv = conv_nd(dimension)(in_channels, out_channels, kernel_size=kernel)
    norm = [batch_norm(dimension, out_channels)] if with_batch_norm else []
    return nn.Sequential(conv, *norm, nn.ReLU())


class HybridSN(nn.Layer):
    """Spectral-spatial convs (3-D and 2-D, in the variant's order), then three Linear layers."""

    def __init__(self, variant: Variant = "3d_first", bands: int = 30, patch_size: int = 25, num_classes: int = 16,
                 conv3d_channels: tuple[int, int, int] = (8, 16, 32), conv3d_depths: tuple[int, int, int] = (7, 5, 3),
                 conv2d_channels: int = 64, hidden: tuple[int, int] = (256, 128), dropout: float = 0.4,
                 fc_relu: bool = True, batch_norm: bool = True, attention: bool = False,
                 attention_reduction: int = 16) -> None:
        super().__init__()
        self.options = opts = HybridSNOptions(
            variant=variant, bands=bands, patch_size=patch_size, num_classes=num_classes,
            conv3d_channels=conv3d_channels, conv3d_depths=conv3d_depths, conv2d_channels=conv2d_channels,
            hidden=hidden, dropout=dropout, fc_relu=fc_relu, batch_norm=batch_norm, attention=attention,
            attention_reduction=attention_reduction)
        (c1, c2, c3), (d1, d2, d3) = opts.conv3d_channels, opts.conv3d_depths
        self.conv1_3d = conv_unit(3, 1, c1, (d1, 3, 3), opts.batch_norm)
        self.conv2_3d = conv_unit(3, c1, c2, (d2, 3, 3), opts.batch_norm)
        self.conv3_3d = conv_unit(3, c2, c3, (d3, 3, 3), opts.batch_norm)
        self.conv4_2d = conv_unit(2, opts.conv2d_in, opts.conv2d_channels, (3, 3), opts.batch_norm)
        self.se_in = SEBlock(**opts.se(opts.conv2d_in).kwargs()) if opts.attention else None
        self.se_out = SEBlock(**opts.se(opts.conv2d_channels).kwargs()) if opts.attention else None
        self.fn1 = nn.Linear(opts.fc_in, opts.hidden[0])
        self.fn2 = nn.Linear(opts.hidden[0], opts.hidden[1])
        self.fn_out = nn.Linear(opts.hidden[1], opts.num_classes)
        self.drop = nn.Dropout(opts.dropout)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """x: (N, 1, bands, patch, patch)."""
        if self.options.variant == "2d_first":
            features = self._features_2d_first(x)
        else:
            features = self._features_3d_first(x)
        out = self.drop(self._hidden_activation(self.fn1(features.flatten(1))))
        out = self.drop(self._hidden_activation(self.fn2(out)))
        return self.fn_out(out)

    def _features_3d_first(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv3_3d(self.conv2_3d(self.conv1_3d(x)))
        batch, channels, depth, height, width = x.shape
        x = x.reshape([batch, channels * depth, height, width])  # spectral planes become channels
        if self.se_in is not None:
            x = self.se_in(x)
        x = self.conv4_2d(x)
        if self.se_out is not None:
            x = self.se_out(x)
        return x

    def _features_2d_first(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, _, bands, height, width = x.shape
        x = self.conv4_2d(x.reshape([batch, bands, height, width]))
        x = x.reshape([batch, 1, *x.shape[1:]])  # Conv2d channels become the spectral axis
        return self.conv3_3d(self.conv2_3d(self.conv1_3d(x)))

    def _hidden_activation(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu(x) if self.options.fc_relu else x
