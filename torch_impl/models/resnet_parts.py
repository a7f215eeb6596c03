"""ResNet units, stems and stages shared by the models; PyTorch twin of paddle_impl/models/resnet_parts.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from crossattn import registry
from crossattn.models.nested import require_single_input
from crossattn.models.resnet_parts import Stem, UnitKind, UnitPlan
from crossattn.spec import Spec
from torch_impl.layers import batch_norm

FRAMEWORK = "torch"
AttentionFactory = Callable[[int], nn.Module]


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
           dilation: int = 1, bias: bool = False) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     bias=bias)


def shortcut(plan: UnitPlan, bias: bool, projection: str) -> nn.Sequential:
    """1x1 projection to the unit's output shape, with BatchNorm (`conv_bn`) or bare (`conv`)."""
    conv = conv2d(plan.in_channels, plan.out_channels, 1, stride=plan.stride, bias=bias)
    if projection == "conv":
        return nn.Sequential(conv)
    return nn.Sequential(conv, batch_norm(2, plan.out_channels))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1 x)))), then the optional attention, + shortcut(x))."""

    def __init__(self, plan: UnitPlan, conv_bias: bool = False, projection: str = "conv_bn",
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv2d(plan.in_channels, plan.planes, 3, stride=plan.stride, padding=1, bias=conv_bias)
        self.bn1 = batch_norm(2, plan.planes)
        self.conv2 = conv2d(plan.planes, plan.out_channels, 3, padding=1, bias=conv_bias)
        self.bn2 = batch_norm(2, plan.out_channels)
        self.attention = attention
        self.shortcut = shortcut(plan, conv_bias, projection) if plan.projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attention is not None:
            out = self.attention(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand, each with BatchNorm; attention before the sum."""

    def __init__(self, plan: UnitPlan, conv_bias: bool = False, projection: str = "conv_bn",
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv2d(plan.in_channels, plan.planes, 1, bias=conv_bias)
        self.bn1 = batch_norm(2, plan.planes)
        self.conv2 = conv2d(plan.planes, plan.planes, 3, stride=plan.stride, padding=plan.dilation,
                            dilation=plan.dilation, bias=conv_bias)
        self.bn2 = batch_norm(2, plan.planes)
        self.conv3 = conv2d(plan.planes, plan.out_channels, 1, bias=conv_bias)
        self.bn3 = batch_norm(2, plan.out_channels)
        self.attention = attention
        self.shortcut = shortcut(plan, conv_bias, projection) if plan.projects else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attention is not None:
            out = self.attention(out)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + identity)


UNITS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stem(stem: Stem, in_channels: int, channels: int, bias: bool) -> nn.Sequential:
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool (`imagenet`), or 3x3/1 conv, BN, ReLU (`cifar`)."""
    if stem == "cifar":
        return nn.Sequential(conv2d(in_channels, channels, 3, padding=1, bias=bias), batch_norm(2, channels),
                             nn.ReLU())
    return nn.Sequential(conv2d(in_channels, channels, 7, stride=2, padding=3, bias=bias), batch_norm(2, channels),
                         nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def make_stage(units: Sequence[UnitPlan], kind: UnitKind, conv_bias: bool = False, projection: str = "conv_bn",
               attention: AttentionFactory | None = None) -> nn.Sequential:
    """The units of one stage; `attention(channels)` gives each unit its own attention block."""
    unit = UNITS[kind]
    return nn.Sequential(*[unit(plan, conv_bias, projection, attention(plan.out_channels) if attention else None)
                           for plan in units])


def build_block(key: str, spec: Spec) -> nn.Module:
    """The twin of a nested block spec, refused when it needs more than one input."""
    block = registry.build(spec, FRAMEWORK)
    require_single_input(key, spec, block.forward)
    return block
