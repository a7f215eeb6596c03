"""Finiteness of a step's loss and gradients for crossattn.training.guard (twin of paddle_impl/finite.py)."""

from __future__ import annotations

import torch


def loss_finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss.detach()).all())


def grads_finite(model: torch.nn.Module) -> bool:
    """All gradients finite, read back as one flag."""
    flags = [torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True
