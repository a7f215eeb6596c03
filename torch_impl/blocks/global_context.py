"""Global context block, PyTorch twin of paddle_impl/blocks/global_context.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.global_context import Fusion, GlobalContextOptions, Pooling
from torch_impl.layers import layer_norm, zero_init_layer


class GlobalContextBlock(nn.Module):
    """z = x * sigmoid(t_mul(context)) + t_add(context); identity at initialisation with add fusion."""

    def __init__(self, in_channels: int, reduction: int = 16, pooling: Pooling = "attention",
                 fusions: tuple[Fusion, ...] = ("add",), zero_init_last: bool = True,
                 norm_epsilon: float = 1e-5) -> None:
        super().__init__()
        self.options = opts = GlobalContextOptions(
            in_channels=in_channels, reduction=reduction, pooling=pooling, fusions=fusions,
            zero_init_last=zero_init_last, norm_epsilon=norm_epsilon)
        self.key = nn.Conv2d(opts.in_channels, 1, kernel_size=1) if opts.pooling == "attention" else None
        self.transform_mul = self._make_transform() if opts.fuses_mul else None
        self.transform_add = self._make_transform() if opts.fuses_add else None
        if opts.fuses_add and opts.zero_init_last:
            zero_init_layer(self.transform_add[-1])

    def _make_transform(self) -> nn.Sequential:
        opts = self.options
        return nn.Sequential(nn.Conv2d(opts.in_channels, opts.bottleneck, kernel_size=1),
                             layer_norm(opts.norm_shape, opts.norm_epsilon),
                             nn.ReLU(),
                             nn.Conv2d(opts.bottleneck, opts.in_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self._context(x)  # (B, C, 1, 1)
        out = x
        if self.transform_mul is not None:
            out = out * torch.sigmoid(self.transform_mul(context))
        if self.transform_add is not None:
            out = out + self.transform_add(context)
        return out

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        if self.key is None:
            return x.mean(dim=(2, 3), keepdim=True)
        weights = torch.softmax(self.key(x).reshape(batch, 1, -1), dim=-1)  # (B, 1, N), one map
        values = x.reshape(batch, channels, -1)  # (B, C, N)
        return torch.matmul(values, weights.transpose(1, 2)).reshape(batch, channels, 1, 1)
