"""Non-local block, PyTorch twin of paddle_impl/blocks/non_local.py."""

from __future__ import annotations

import torch
from torch import nn

from crossattn.blocks.non_local import Mode, NonLocalOptions, pairwise_divisor
from torch_impl.blocks.attention import fused_attention
from torch_impl.layers import batch_norm, conv_nd, max_pool_nd, zero_init_layer


class NonLocalBlock(nn.Module):
    """z = x + W(softmax-or-normalised f(theta x, phi x) . g x); identity at initialisation."""

    def __init__(self, in_channels: int, inter_channels: int | None = None, reduction: int = 2,
                 mode: Mode = "embedded_gaussian", dimension: int = 2, sub_sample: bool = True,
                 bn_layer: bool = True, use_scale: bool = False, zero_init: bool = True,
                 normalize_by: str = "positions", scale_by: str = "inter_channels",
                 affinity: str = "positions", attention_impl: str = "explicit") -> None:
        super().__init__()
        self.options = opts = NonLocalOptions(
            in_channels=in_channels, inter_channels=inter_channels, reduction=reduction, mode=mode,
            dimension=dimension, sub_sample=sub_sample, bn_layer=bn_layer, use_scale=use_scale,
            zero_init=zero_init, normalize_by=normalize_by, scale_by=scale_by, affinity=affinity,
            attention_impl=attention_impl)
        conv = conv_nd(opts.dimension)
        self.g = conv(opts.in_channels, opts.inter, kernel_size=1)
        self.theta = conv(opts.in_channels, opts.inter, kernel_size=1) if opts.embeds_theta_phi else None
        self.phi = conv(opts.in_channels, opts.inter, kernel_size=1) if opts.embeds_theta_phi else None
        self.pool = max_pool_nd(opts.dimension, opts.pool_kernel) if opts.sub_sample else None
        # f(x_i, x_j) = ReLU(w^T [theta_i, phi_j]); stored as the paper's 1x1 conv over the pair
        self.concat_project = (nn.Conv2d(2 * opts.inter, 1, kernel_size=1, bias=False)
                               if opts.mode == "concatenation" else None)
        if opts.bn_layer:
            self.W = nn.Sequential(conv(opts.inter, opts.in_channels, kernel_size=1),
                                   batch_norm(opts.dimension, opts.in_channels))
            last = self.W[1]
        else:
            self.W = conv(opts.inter, opts.in_channels, kernel_size=1)
            last = self.W
        if opts.zero_init:
            zero_init_layer(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.affinity == "channels":
            return x + self.W(self._relate_channels(x))
        return x + self.W(self._relate_positions(x))

    def _relate_channels(self, x: torch.Tensor) -> torch.Tensor:
        """y = f(theta phi^T) g with a (B, C', C') affinity: every position kept, channels mixed."""
        opts = self.options
        batch = x.shape[0]
        g_x = self.g(x).reshape(batch, opts.inter, -1)  # (B, Ci, N)
        if opts.embeds_theta_phi:
            theta_x = self.theta(x).reshape(batch, opts.inter, -1)
            phi_x = self.phi(x).reshape(batch, opts.inter, -1)
        else:
            theta_x = phi_x = x.reshape(batch, opts.in_channels, -1)
        f = torch.matmul(theta_x, phi_x.transpose(1, 2))  # (B, Ci, Ci)
        if opts.mode == "dot_product":
            f = f / pairwise_divisor(opts, tuple(x.shape), phi_x.shape[2])
        else:
            f = torch.softmax(f, dim=-1)
        return torch.matmul(f, g_x).reshape(batch, opts.inter, *x.shape[2:])

    def _relate_positions(self, x: torch.Tensor) -> torch.Tensor:
        """y_i = sum_j f(theta_i, phi_j) g_j / C(x) with an (B, N, Nk) affinity (the paper)."""
        opts = self.options
        batch = x.shape[0]
        keys = self.pool if self.pool is not None else nn.Identity()
        g_x = keys(self.g(x)).reshape(batch, opts.inter, -1).transpose(1, 2)  # (B, Nk, Ci)
        if opts.embeds_theta_phi:
            theta_x = self.theta(x).reshape(batch, opts.inter, -1)  # (B, Ci, N)
            phi_x = keys(self.phi(x)).reshape(batch, opts.inter, -1)  # (B, Ci, Nk)
        else:
            theta_x = x.reshape(batch, opts.in_channels, -1)
            phi_x = keys(x).reshape(batch, opts.in_channels, -1)
        if opts.fused:
            y = self._attend_fused(theta_x, phi_x, g_x, tuple(x.shape))  # (B, N, Ci)
        else:
            y = torch.matmul(self._affinity(theta_x, phi_x, tuple(x.shape)), g_x)  # (B, N, Nk) @ (B, Nk, Ci)
        return y.transpose(1, 2).reshape(batch, opts.inter, *x.shape[2:])

    def _attend_fused(self, theta_x: torch.Tensor, phi_x: torch.Tensor, g_x: torch.Tensor,
                      shape: tuple[int, ...]) -> torch.Tensor:
        """The same y without the (B, N, Nk) affinity: memory linear in N."""
        opts = self.options
        if opts.mode == "dot_product":  # (theta^T phi) g = theta^T (phi g): a (B, Ci, Ci) middle factor
            return torch.matmul(theta_x.transpose(1, 2), torch.matmul(phi_x, g_x)) / pairwise_divisor(
                opts, shape, phi_x.shape[2])
        return fused_attention(theta_x.transpose(1, 2), phi_x.transpose(1, 2), g_x, opts.scale)

    def _affinity(self, theta_x: torch.Tensor, phi_x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        opts = self.options
        if opts.mode == "concatenation":
            weight = self.concat_project.weight.reshape(2 * opts.inter)
            from_theta = torch.einsum("c,bcn->bn", weight[: opts.inter], theta_x)
            from_phi = torch.einsum("c,bcn->bn", weight[opts.inter:], phi_x)
            f = torch.relu(from_theta.unsqueeze(2) + from_phi.unsqueeze(1))
            return f / pairwise_divisor(opts, shape, phi_x.shape[2])
        f = torch.matmul(theta_x.transpose(1, 2), phi_x)
        if opts.mode == "dot_product":
            return f / pairwise_divisor(opts, shape, phi_x.shape[2])
        if opts.use_scale:
            f = f * opts.scale
        return torch.softmax(f, dim=-1)
