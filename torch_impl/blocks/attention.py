"""Softmax attention without the N x Nk matrix, PyTorch twin of paddle_impl/blocks/attention.py.

torch's scaled_dot_product_attention runs a memory-linear (flash) kernel on CPU only for
contiguous 4-D inputs whose query/key width equals the value width; anything else silently
falls back to the explicit math kernel. The inputs are therefore made contiguous and the
narrower of the two widths is zero-padded (zero query/key columns leave the scores unchanged;
zero value columns give zero outputs, sliced off).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * q k^T) v for q (B, N, E), k (B, Nk, E), v (B, Nk, Ev) -> (B, N, Ev)."""
    width, value_width = q.shape[-1], v.shape[-1]
    if width < value_width:
        q, k = F.pad(q, (0, value_width - width)), F.pad(k, (0, value_width - width))
    elif value_width < width:
        v = F.pad(v, (0, width - value_width))
    out = F.scaled_dot_product_attention(q.contiguous().unsqueeze(1), k.contiguous().unsqueeze(1),
                                         v.contiguous().unsqueeze(1), scale=float(scale))
    return out[:, 0, :, :value_width]
