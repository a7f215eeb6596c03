"""What `crossattn bench` needs from torch: tensors on a device, a timed step, synchronisation, memory, FLOPs.

Mirrors paddle_impl/bench.py function for function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def setup(device: str, threads: int) -> str:
    """Intra-op threads on the CPU; returns the device's name as the framework spells it."""
    if threads:
        torch.set_num_threads(threads)
    if device == "gpu":
        if not torch.cuda.is_available():
            from crossattn.errors import CrossattnError

            raise CrossattnError("--device gpu: torch sees no CUDA device (torch.cuda.is_available() is False)")
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads)"


def prepare(model: torch.nn.Module, x: np.ndarray, device: str, dtype: str) -> tuple[torch.nn.Module, torch.Tensor]:
    target = "cuda" if device == "gpu" else "cpu"
    model = model.to(device=target, dtype=getattr(torch, dtype))
    return model, torch.from_numpy(np.ascontiguousarray(x)).to(target)


def forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Inference: eval mode, no graph."""
    model.eval()
    with torch.no_grad():
        model(x)


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Training's share of a step: train mode, forward, backward of the output's sum (no optimizer)."""
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()


def synchronize(device: str) -> None:
    if device == "gpu":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "gpu":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int | None:
    """The allocator's peak on a GPU; None on the CPU (the caller measures the process instead)."""
    return int(torch.cuda.max_memory_allocated()) if device == "gpu" else None


def flops(model: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Forward FLOPs as torch's FlopCounterMode counts them (2 per multiply-add of matmuls and convolutions)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def parameters(model: Any) -> int:
    """Trainable parameters (paddle keeps BatchNorm statistics as parameters; trainable ones compare)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
