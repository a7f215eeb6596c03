"""Finiteness of a step's loss and gradients for crossattn.training.guard (twin of torch_impl/finite.py)."""

from __future__ import annotations

import paddle


def loss_finite(loss: paddle.Tensor) -> bool:
    return bool(paddle.isfinite(loss.detach()).all())


def grads_finite(model: paddle.nn.Layer) -> bool:
    """All gradients finite, read back as one flag."""
    flags = [paddle.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    return bool(paddle.stack(flags).all()) if flags else True
