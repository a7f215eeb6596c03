"""What `crossattn bench` needs from paddle: tensors on a device, a timed step, synchronisation, memory, FLOPs.

Mirrors torch_impl/bench.py function for function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle


def setup(device: str, threads: int) -> str:
    """Math-library threads on the CPU (paddle's own default is OMP_NUM_THREADS, set to 1 at its import
    when unset); returns the device's name as the framework spells it."""
    if threads:
        paddle.base.core.set_num_threads(threads)
    if device == "gpu":
        if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
            from crossattn.errors import CrossattnError

            raise CrossattnError("--device gpu: this paddle build sees no CUDA device (paddlepaddle-gpu needed)")
        paddle.set_device("gpu")
        return f"gpu:0 ({paddle.device.cuda.get_device_name()})"
    paddle.set_device("cpu")
    return f"cpu ({threads or 'default'} threads)"


def prepare(model: paddle.nn.Layer, x: np.ndarray, device: str, dtype: str) -> tuple[paddle.nn.Layer, paddle.Tensor]:
    model._to_impl(dtype=dtype, floating_only=True)
    return model, paddle.to_tensor(np.ascontiguousarray(x))


def forward(model: paddle.nn.Layer, x: paddle.Tensor) -> None:
    """Inference: eval mode, no graph."""
    model.eval()
    with paddle.no_grad():
        model(x)


def forward_backward(model: paddle.nn.Layer, x: paddle.Tensor) -> None:
    """Training's share of a step: train mode, forward, backward of the output's sum (no optimizer)."""
    model.train()
    model.clear_gradients(set_to_zero=False)
    model(x).sum().backward()


def synchronize(device: str) -> None:
    if device == "gpu":
        paddle.device.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "gpu":
        paddle.device.cuda.reset_max_memory_allocated()


def peak_memory(device: str) -> int | None:
    """The allocator's peak on a GPU; None on the CPU (the caller measures the process instead)."""
    return int(paddle.device.cuda.max_memory_allocated()) if device == "gpu" else None


def flops(model: paddle.nn.Layer, x: paddle.Tensor) -> float | None:
    """Not counted on the paddle side: bench takes the torch twin's count (the twins compute the same)."""
    return None


def parameters(model: Any) -> int:
    """Trainable parameters (BatchNorm statistics are parameters in paddle, not trainable ones)."""
    return int(sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient))
