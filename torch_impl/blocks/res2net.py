"""Res2Net bottleneck, PyTorch twin of paddle_impl/blocks/res2net.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.res2net import Res2NetOptions, Shortcut
from crossattn.resample import avg_pool_geometry
from torch_impl.layers import batch_norm


class AvgPool(nn.Module):
    """Average pool as a sum of strided slices over a shared divisor map.

    paddle's AvgPool2D backward is off by ~1e-8 in float64 (its divisor is not held in
    float64); summing slices gives both twins the exact gradient. `count_padding` is
    torch's count_include_pad, stated explicitly because the frameworks' defaults differ.
    """

    def __init__(self, kernel: int, stride: int, padding: int = 0, count_padding: bool = True,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.count_padding, self.ceil_mode = count_padding, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = avg_pool_geometry(x.shape[2], x.shape[3], self.kernel, self.stride, self.padding,
                                     self.count_padding, self.ceil_mode)
        (out_h, out_w), (top, bottom, left, right) = geometry.out_size, geometry.pads
        padded = nn.functional.pad(x, [left, right, top, bottom])
        span_h, span_w = self.stride * (out_h - 1) + 1, self.stride * (out_w - 1) + 1
        total = None
        for i in range(self.kernel):
            for j in range(self.kernel):
                cells = padded[:, :, i: i + span_h: self.stride, j: j + span_w: self.stride]
                total = cells if total is None else total + cells
        return total / torch.from_numpy(geometry.divisor).to(x.device, x.dtype)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


def _shortcut(opts: Res2NetOptions) -> nn.Module | None:
    if opts.shortcut == "none":
        return None
    if opts.shortcut == "conv":
        return nn.Sequential(_conv(opts.inplanes, opts.out_channels, 1, opts.stride),
                             batch_norm(2, opts.out_channels))
    # Res2Net v1b: average the stride x stride cells (a partial last window averages what it covers), then 1x1
    return nn.Sequential(AvgPool(opts.stride, opts.stride, count_padding=False, ceil_mode=True),
                         _conv(opts.inplanes, opts.out_channels, 1), batch_norm(2, opts.out_channels))


class Res2NetBottleneck(nn.Module):
    """1x1 conv, hierarchical 3x3 convs over `scale` channel splits, 1x1 conv; residual; ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, scale: int = 4, base_width: int = 26,
                 stype: str = "normal", downsample: Shortcut = "auto") -> None:
        super().__init__()
        self.options = opts = Res2NetOptions(inplanes=inplanes, planes=planes, stride=stride, scale=scale,
                                             base_width=base_width, stype=stype, downsample=downsample)
        self.conv1 = _conv(opts.inplanes, opts.split_channels, 1)
        self.bn1 = batch_norm(2, opts.split_channels)
        self.convs = nn.ModuleList([_conv(opts.width, opts.width, 3, opts.stride) for _ in range(opts.branches)])
        self.bns = nn.ModuleList([batch_norm(2, opts.width) for _ in range(opts.branches)])
        # padded cells count in the divisor (9 everywhere), as in the authors' code
        self.pool = (AvgPool(3, opts.stride, padding=1, count_padding=True)
                     if opts.stype == "stage" and opts.passes_last_split else None)
        self.conv3 = _conv(opts.split_channels, opts.out_channels, 1)
        self.bn3 = batch_norm(2, opts.out_channels)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(opts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.options
        out = self.relu(self.bn1(self.conv1(x)))
        splits = torch.chunk(out, opts.scale, dim=1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            branch_in = splits[i] if i == 0 or opts.stype == "stage" else outputs[-1] + splits[i]
            outputs.append(self.relu(bn(conv(branch_in))))
        if opts.passes_last_split:
            outputs.append(self.pool(splits[-1]) if self.pool is not None else splits[-1])
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)
