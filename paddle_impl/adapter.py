"""What crossattn's framework-neutral engines need from paddle: slots, state, one step.

Mirrors torch_impl/adapter.py function for function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import paddle
from paddle import nn

from crossattn.errors import TransferError
from paddle_impl.layers import ZERO_INIT_ATTR
from weight_transfer.slots import Slot, join

FRAMEWORK = "paddle"
KIND_ATTR = "crossattn_layer_kind"


@dataclasses.dataclass
class StepResult:
    output: np.ndarray
    input_grad: np.ndarray
    param_grads: dict[str, np.ndarray]
    state: dict[str, np.ndarray]  # state after the step (running statistics moved in train mode)
    bn_counts: dict[str, int]  # values per channel each BatchNorm saw, for the variance rule


def setup(device: str = "cpu") -> None:
    """Checks run on the CPU so both frameworks use comparable kernels."""
    paddle.set_device(device)


def to_dtype(model: nn.Layer, dtype: str) -> nn.Layer:
    """Cast every parameter and buffer (checks run in float64 so rounding is not mistaken for divergence)."""
    model.to(dtype=dtype)
    return model


def layer_kind(layer: nn.Layer) -> str:
    declared = getattr(layer, KIND_ATTR, None)
    if declared:
        return declared
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, (nn.layer.norm._BatchNormBase, nn.BatchNorm)):
        return "batchnorm"
    if isinstance(layer, nn.LayerNorm):
        return "layernorm"
    if isinstance(layer, nn.GroupNorm):
        return "groupnorm"
    if isinstance(layer, nn.layer.conv._ConvNd):
        return "conv"
    if isinstance(layer, nn.Embedding):
        return "embedding"
    return "other"


def slots(model: nn.Layer) -> dict[str, Slot]:
    """Every state tensor of `model`, with the kind of the layer that owns it."""
    table: dict[str, Slot] = {}
    for layer_name, layer in model.named_sublayers(include_self=True):
        kind = layer_kind(layer)
        zero = bool(getattr(layer, ZERO_INIT_ATTR, False))
        skip = getattr(layer, "_non_persistable_buffer_names_set", set())
        tensors = list(layer.named_parameters(include_sublayers=False))
        tensors += [(n, b) for n, b in layer.named_buffers(include_sublayers=False) if n not in skip]
        for name, tensor in tensors:
            key = join(layer_name, name)
            trainable = not tensor.stop_gradient
            table[key] = Slot(key, layer_name, name, kind, tuple(tensor.shape),
                              str(tensor.numpy().dtype), trainable, zero)
    return table


def state(model: nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: nn.Layer, values: Mapping[str, np.ndarray]) -> None:
    """Load exactly the model's keys with exactly its shapes, or raise naming each problem."""
    own = slots(model)
    problems = [f"missing `{k}`" for k in own if k not in values]
    problems += [f"unexpected `{k}`" for k in values if k not in own]
    problems += [f"mis-shaped `{k}`: got {list(np.shape(v))}, model has {list(own[k].shape)}"
                 for k, v in values.items() if k in own and tuple(np.shape(v)) != own[k].shape]
    if problems:
        raise TransferError(problems, "loading paddle state")
    model.set_state_dict({k: np.ascontiguousarray(v) for k, v in values.items()})


def _bn_count_hooks(model: nn.Layer, counts: dict[str, int]) -> list:
    handles = []
    for name, layer in model.named_sublayers(include_self=True):
        if layer_kind(layer) == "batchnorm":
            def hook(lay, inputs, name=name):
                counts[name] = int(np.prod(inputs[0].shape)) // int(inputs[0].shape[1])
            handles.append(layer.register_forward_pre_hook(hook))
    return handles


def step(model: nn.Layer, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray],
         train: bool) -> StepResult:
    """One forward in train or eval mode and a backward of sum(output * cotangent)."""
    model.train() if train else model.eval()
    counts: dict[str, int] = {}
    handles = _bn_count_hooks(model, counts)
    try:
        inputs = paddle.to_tensor(np.ascontiguousarray(x), stop_gradient=False)
        output = model(inputs)
        weight = paddle.to_tensor(cotangent(tuple(output.shape)))
        model.clear_gradients(set_to_zero=False)
        (output * weight).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = {name: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape), x.dtype))
             for name, p in model.named_parameters() if not p.stop_gradient}
    input_grad = inputs.grad.numpy().copy() if inputs.grad is not None else np.zeros_like(x)
    return StepResult(output.numpy().copy(), input_grad, grads, state(model), counts)
