"""What crossattn's framework-neutral engines need from paddle: slots, state, one step.

Mirrors torch_impl/adapter.py function for function.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, MutableMapping

import numpy as np
import paddle
from paddle import nn
from paddle.nn.layer.rnn import RNNBase

from crossattn.dropout_calls import DropoutCalls
from crossattn.errors import CrossattnError, TransferError, forward_of
from crossattn.tracing import LayerTrace, call_key
from paddle_impl.float64_casts import float64_kept
from paddle_impl.functional_dropout import held_dropout_calls
from paddle_impl.layers import ZERO_INIT_ATTR
from weight_transfer.slots import Slot, join, state_problems, with_aliases

FRAMEWORK = "paddle"
KIND_ATTR = "crossattn_layer_kind"


@dataclasses.dataclass
class StepResult:
    output: np.ndarray
    input_grad: np.ndarray
    param_grads: dict[str, np.ndarray]
    #: state after the step other than trainable parameters, which a step does not move (running
    #: statistics moved in train mode, counters, frozen tensors)
    state: dict[str, np.ndarray]
    #: per BatchNorm, per call: (batch mean, biased batch variance, values per channel)
    bn_batches: dict[str, list[tuple[np.ndarray, np.ndarray, int]]]
    #: the model's own casts to float32 a float64 step kept in float64 (`paddle_impl.float64_casts`); the torch
    #: twin's field also holds the constants it gave paddle's float32 values
    rounded: list[str] = dataclasses.field(default_factory=list)
    #: dropout held off, with its rates: layers in a train-mode step (`set_train_mode`), and in any step dropout
    #: called as a function with dropout on (`paddle_impl.functional_dropout`)
    held_dropout: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the random tensors the forward drew, given the stream both frameworks share (`crossattn.dropout_calls`)
    shared_draws: list[str] = dataclasses.field(default_factory=list)


def setup(device: str = "cpu") -> None:
    """Checks run on the CPU so both frameworks use comparable kernels."""
    paddle.set_device(device)


def to_dtype(model: nn.Layer, dtype: str) -> nn.Layer:
    """Cast floating parameters and buffers (checks run in float64 so rounding is not mistaken for divergence).

    Integer buffers keep their dtype, as torch's Module.to does.
    """
    model._to_impl(dtype=dtype, floating_only=True)
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
    if isinstance(layer, nn.layer.norm._InstanceNormBase):
        return "instancenorm"
    if isinstance(layer, nn.PReLU):
        return "prelu"
    if isinstance(layer, nn.layer.conv._ConvNd):
        return "conv"
    if isinstance(layer, nn.Embedding):
        return "embedding"
    if isinstance(layer, nn.MultiHeadAttention):
        return "mha"
    return "other"


#: MultiHeadAttention sublayers whose tensors torch keeps in the attention module itself (in_proj_*)
_MHA_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def slots(model: nn.Layer) -> dict[str, Slot]:
    """Every state tensor of `model`, with the kind of the layer that owns it."""
    table: dict[str, Slot] = {}
    seen: dict[int, str] = {}  # a tensor already in the table (paddle's RNN cells hold their layer's weights)
    aliases: dict[str, list[str]] = {}
    layers = dict(model.named_sublayers(include_self=True))
    for layer_name, layer in layers.items():
        kind = layer_kind(layer)
        zero = bool(getattr(layer, ZERO_INIT_ATTR, False))
        skip = getattr(layer, "_non_persistable_buffer_names_set", set())
        tensors = list(layer.named_parameters(include_sublayers=False))
        tensors += [(n, b) for n, b in layer.named_buffers(include_sublayers=False) if n not in skip]
        owner, prefix = layer_name, ""
        parent, _, attr = layer_name.rpartition(".")
        if attr in _MHA_PROJECTIONS and parent in layers and layer_kind(layers[parent]) == "mha":
            # q/k/v projections belong to the attention layer, as torch's in_proj_* tensors do
            owner, prefix, kind = parent, attr + ".", "mha"
        for name, tensor in tensors:
            key = join(layer_name, name)
            if id(tensor) in seen:
                aliases.setdefault(seen[id(tensor)], []).append(key)
                continue
            seen[id(tensor)] = key
            trainable = not tensor.stop_gradient
            table[key] = Slot(key, owner, prefix + name, kind, tuple(tensor.shape),
                              _dtype_name(tensor), trainable, zero)
    for key, names in aliases.items():
        table[key] = dataclasses.replace(table[key], aliases=tuple(names))
    return table


def padding_rows(model: nn.Layer) -> dict[str, int]:
    """Each embedding weight with a padding index, and that row: paddle returns zeros there whatever it holds."""
    return {join(name, "weight"): int(layer._padding_idx) % layer._num_embeddings
            for name, layer in model.named_sublayers(include_self=True)
            if isinstance(layer, nn.Embedding) and getattr(layer, "_padding_idx", None) is not None}


def layer_names(model: nn.Layer) -> set[str]:
    """Every layer's dotted name ("" for the model itself), parameterless ones included: a name map may name
    any of them (a shared layer under each of its names, which named_sublayers gives once)."""
    names = {""}
    stack = [("", model)]
    while stack:
        prefix, layer = stack.pop()
        for name, sub in layer._sub_layers.items():
            if sub is not None:
                full = f"{prefix}.{name}" if prefix else name
                names.add(full)
                stack.append((full, sub))
    return names


def _state_tensors(model: nn.Layer) -> dict[str, paddle.Tensor]:
    """The model's state dict, each tensor once: under its first key (an RNN layer's own name), without the
    aliases paddle's state dict also holds it under (`Slot.aliases`)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in model.state_dict().items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[key] = tensor
    return out


def _dtype_name(tensor: paddle.Tensor) -> str:
    """numpy's name of the tensor's dtype, read without copying data (and valid before a lazy init)."""
    return str(tensor.dtype).removeprefix("paddle.")


def state(model: nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in _state_tensors(model).items()}  # numpy() copies in paddle


def _untrained_state(model: nn.Layer) -> dict[str, np.ndarray]:
    """The state a step may change: all but the trainable parameters (copying those is most of a copy)."""
    trained = {id(p) for p in model.parameters() if not p.stop_gradient}
    return {k: v.numpy() for k, v in _state_tensors(model).items() if id(v) not in trained}


def _c_order(value: np.ndarray) -> np.ndarray:
    """C order, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d, which paddle then skips
    loading with only a warning)."""
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")


def load_state(model: nn.Layer, values: Mapping[str, np.ndarray]) -> None:
    """Load exactly the model's keys with exactly its shapes, or raise naming each problem."""
    own = slots(model)
    problems = state_problems(own, values)
    if problems:
        raise TransferError(problems, "loading paddle state")
    model.set_state_dict(with_aliases({k: _c_order(v) for k, v in values.items()}, own))


def _bn_batch_hooks(model, batches: dict[str, list]) -> list:
    """Record each BatchNorm call's batch statistics (train mode), for the running-statistics rule."""
    handles = []
    for name, layer in model.named_sublayers(include_self=True):
        if layer_kind(layer) == "batchnorm":
            def hook(mod, inputs, name=name):
                values = inputs[0].detach().numpy().astype(np.float64)
                values = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
                batches.setdefault(name, []).append((values.mean(axis=1), values.var(axis=1), values.shape[1]))
            handles.append(layer.register_forward_pre_hook(hook))
    return handles


def dropout_calls(model: nn.Layer) -> DropoutCalls:
    """A record of the dropout calls a step of `model` holds off, each named by its layer."""
    return DropoutCalls(lambda: {id(layer): name for name, layer in model.named_sublayers(include_self=True)})


def _forward_backward(model: nn.Layer, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray],
                      dropouts: DropoutCalls | None = None,
                      kept: set[str] | None = None) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Forward `x`, then backward sum(output * cotangent); returns (input, output) tensors. Dropout is masked
    alike or held (into `dropouts`); in a float64 step the model's own casts to float32 are kept in float64
    (into `kept`: `paddle_impl.float64_casts`)."""
    inputs = paddle.to_tensor(np.ascontiguousarray(x), stop_gradient=False)
    with held_dropout_calls(DropoutCalls() if dropouts is None else dropouts), _recurrent_for_backward(model), \
            float64_kept(set() if kept is None else kept, x.dtype == np.float64):
        with forward_of("paddle", x.shape):
            output = model(inputs)
    if not isinstance(output, paddle.Tensor):
        raise CrossattnError(f"the model returns {type(output).__name__}, not one tensor; check and diff compare "
                             f"a single output (wrap the model to return the tensor to compare)")
    weight = paddle.to_tensor(cotangent(tuple(output.shape)))
    model.clear_gradients(set_to_zero=False)
    with _recurrent_for_backward(model):
        (output * weight).sum().backward()
    return inputs, output


def _take_grads(model: nn.Layer, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Each trainable parameter's gradient, handed over instead of copied (`numpy()` copies; DLPack shares
    the buffer): the parameter lets go of it, so the array is the result's alone."""
    grads = {}
    for name, p in model.named_parameters():
        if not p.stop_gradient:
            grads[name] = np.from_dlpack(p.grad.detach()) if p.grad is not None else np.zeros(tuple(p.shape), dtype)
    model.clear_gradients(set_to_zero=False)
    return grads


def set_train_mode(model: nn.Layer, train: bool) -> dict[str, float]:
    """Train or eval mode. Plain dropout layers (no `axis`) stay in it: their call takes the mask of the stream
    both frameworks share (under `held_dropout_calls`); the other dropout kinds are held off, as no two
    frameworks draw their masks alike. Returns each dropout layer so held, with its rate (an attention layer's own
    dropout of its weights too, and a recurrent layer's between its layers: they have no other train-mode
    behaviour)."""
    model.train() if train else model.eval()
    held = {}
    for name, layer in model.named_sublayers():
        if isinstance(layer, nn.Dropout) and layer.axis is None:
            continue  # plain dropout: the shared stream's mask (`paddle_impl.functional_dropout`)
        if isinstance(layer, (nn.Dropout, nn.Dropout2D, nn.Dropout3D, nn.AlphaDropout)):
            layer.eval()
            held[name] = float(layer.p)
        elif isinstance(layer, nn.MultiHeadAttention):
            layer.eval()
            held[name] = float(layer.dropout)
        elif isinstance(layer, RNNBase) and train:  # its dropout between layers: `_recurrent_for_backward`
            held[name] = float(layer.dropout)
    return held


@contextlib.contextmanager
def _recurrent_for_backward(model: nn.Layer) -> Iterator[None]:
    """paddle's fused recurrent kernel (LSTM, GRU, SimpleRNN on the CPU too) has no backward in eval mode
    ("Tensor holds no memory"): within, those layers run in train mode with their dropout between layers set
    to 0, which computes what eval mode does; each layer's mode and rate are restored after."""
    layers = [layer for _, layer in model.named_sublayers(include_self=True) if isinstance(layer, RNNBase)]
    kept = [(layer, layer.training, layer.dropout) for layer in layers]
    for layer in layers:
        layer.training, layer.dropout = True, 0.0
    try:
        yield
    finally:
        for layer, training, rate in kept:
            layer.training, layer.dropout = training, rate


def bn_momenta(model: nn.Layer) -> dict[str, float | None]:
    """Each BatchNorm layer's weight of a new batch in its running statistics, as torch states it: paddle's
    `momentum` weighs the running value, so this is 1 - momentum."""
    return {name: 1.0 - float(layer._momentum)
            for name, layer in model.named_sublayers() if layer_kind(layer) == "batchnorm"}


def step(model: nn.Layer, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray],
         train: bool) -> StepResult:
    """One forward in train or eval mode (dropout held off) and a backward of sum(output * cotangent)."""
    held = set_train_mode(model, train)
    batches: dict[str, list] = {}
    dropouts = dropout_calls(model)
    kept: set[str] = set()
    handles = _bn_batch_hooks(model, batches) if train else []
    try:
        inputs, output = _forward_backward(model, x, cotangent, dropouts, kept)
    finally:
        for handle in handles:
            handle.remove()
    grads = _take_grads(model, x.dtype)
    input_grad = inputs.grad.numpy() if inputs.grad is not None else np.zeros_like(x)
    return StepResult(output.numpy(), input_grad, grads, _untrained_state(model), batches, sorted(kept),
                      held_dropout={**(held if train else {}), **dropouts.held},
                      shared_draws=list(dropouts.draws))


def trace(model: nn.Layer, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray], train: bool,
          feed: Mapping[str, list[np.ndarray]] | None = None,
          feed_grads: Mapping[str, np.ndarray] | None = None) -> LayerTrace:
    """A step recording every layer's inputs, output, output gradient and input gradient.

    `feed` replaces a layer's inputs by given values (single-step mode: each
    layer sees the other framework's input, so errors do not accumulate);
    the replacement keeps the graph connected so gradients still flow. The
    recorded inputs are the model's own, before replacement, so code between
    layers is still compared. `feed_grads` likewise replaces the gradient
    arriving at a layer's output. Each floating input passes through its own
    exact identity node, so the gradient a layer's backward sends to it is
    recorded separately from other consumers of the same tensor.
    """
    set_train_mode(model, train)
    record = LayerTrace(state_before=state(model))
    calls: dict[str, int] = {}
    stack: list[str] = []
    produced: dict[int, tuple[str, object]] = {}  # id of an output tensor -> (latest layer returning it, tensor)
    handles = []

    def pre_hook(layer, args, name):
        calls[name] = calls.get(name, 0) + 1
        key = call_key(name, calls[name])
        record.parent[key] = stack[-1] if stack else None
        stack.append(key)
        record.events.append(("in", key))
        record.inputs[key] = [a.detach().numpy().copy() for a in args if _is_float(a)]
        given = iter(feed[key]) if feed is not None and key in feed else None
        slots: list[np.ndarray | None] = []
        replaced = []
        for a in args:
            if not _is_float(a):
                replaced.append(a)
                continue
            b = a + (paddle.to_tensor(next(given)).astype(a.dtype) - a).detach() if given is not None else a * 1.0
            if not b.stop_gradient:
                index = len(slots)
                slots.append(None)

                def input_grad_hook(grad, key=key, index=index):
                    slots[index] = grad.detach().numpy().copy()
                    record.input_grads[key] = [s for s in slots if s is not None]
                    record.grad_events.append(("input_grad", key))
                b.register_hook(input_grad_hook)
            replaced.append(b)
        return tuple(replaced)

    def post_hook(layer, args, output, name):
        key = call_key(name, calls[name])
        if stack and stack[-1] == key:
            stack.pop()
        tensor = _first_tensor(output)
        if tensor is None:
            return
        record.order.append(key)
        record.events.append(("out", key))
        inner = produced.get(id(tensor))
        if inner is not None and inner[1] is tensor:  # a container returning its last layer's very tensor
            record.outer[inner[0]] = key
        produced[id(tensor)] = (key, tensor)
        record.outputs[key] = tensor.detach().numpy().copy()
        if not tensor.stop_gradient:
            def grad_hook(grad, key=key):
                record.grads[key] = grad.detach().numpy().copy()
                record.grad_events.append(("grad", key))
                if feed_grads is not None and key in feed_grads:
                    return paddle.to_tensor(feed_grads[key]).astype(grad.dtype)
                return None
            tensor.register_hook(grad_hook)

    for name, layer in model.named_sublayers(include_self=True):
        handles.append(layer.register_forward_pre_hook(lambda m, a, name=name: pre_hook(m, a, name)))
        handles.append(layer.register_forward_post_hook(lambda m, a, o, name=name: post_hook(m, a, o, name)))
    if train:  # registered after the feeding hooks: a fed BatchNorm records the statistics it normalised with
        handles += _bn_batch_hooks(model, record.bn_batches)
    dropouts = dropout_calls(model)
    kept: set[str] = set()
    try:
        inputs, output = _forward_backward(model, x, cotangent, dropouts, kept)
    finally:
        for handle in handles:
            handle.remove()
    record.rounded = sorted(kept)
    record.held_dropout = dict(dropouts.held)
    record.output = output.numpy().copy()
    record.input_grad = inputs.grad.numpy().copy() if inputs.grad is not None else np.zeros_like(x)
    record.param_grads = _take_grads(model, x.dtype)
    record.state_after = state(model)
    return record


def _is_float(value) -> bool:
    return isinstance(value, paddle.Tensor) and value.dtype in (paddle.float16, paddle.bfloat16, paddle.float32,
                                                                paddle.float64)


def _first_tensor(output):
    if _is_float(output):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if _is_float(o)), None)
    return None


# --------------------------------------------------------------------------- lazy models (conversion)


@contextlib.contextmanager
def default_dtype(dtype: str) -> Iterator[None]:
    """Floating tensors created inside are `dtype`: a model built in the dtype it is checked in needs no cast."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


@contextlib.contextmanager
def lazy() -> Iterator[None]:
    """Layers built inside defer their parameters' initialisation (LazyGuard): slots cost nothing."""
    with paddle.LazyGuard():
        yield


def uncovered(model: nn.Layer) -> list[str]:
    """Parameters of a lazily built model that no state can initialise (not in its state dict)."""
    state = model.state_dict()
    return [name for name, _ in model.named_parameters() if name not in state]


def load_lazy(model: nn.Layer, values: MutableMapping[str, np.ndarray], consume: bool = False) -> nn.Layer:
    """Initialise a lazily built model from `values`, tensor by tensor.

    Paddle copies each array into its own storage; with `consume` each array
    is dropped from `values` once copied, so the state and the model never
    both hold the whole checkpoint. Raises CrossattnError if a parameter the
    state does not cover is left uninitialised.
    """
    own = slots(model)
    problems = state_problems(own, values)
    if problems:
        raise TransferError(problems, "loading paddle state")
    state = _state_tensors(model)
    left_out = [name for name, _ in model.named_parameters() if name not in state]
    if left_out:  # checked before anything is consumed, so the caller can still build the model for real
        raise CrossattnError(f"parameters {', '.join(left_out[:5])} are not in the model's state dict")
    for key, tensor in state.items():
        tensor.set_value(_c_order(values[key]))
        if consume:
            del values[key]
    left = [name for name, p in model.named_parameters() if not p._is_initialized()]
    if left:
        raise CrossattnError(f"parameters {', '.join(left[:5])} have no value in the state")
    return model


def forward(model: nn.Layer, x: np.ndarray, train: bool) -> np.ndarray:
    """The output alone (no graph kept): what a conversion's verification compares."""
    model.train() if train else model.eval()
    with paddle.no_grad():
        with forward_of("paddle", x.shape):
            output = model(paddle.to_tensor(np.ascontiguousarray(x)))
    if not isinstance(output, paddle.Tensor):
        raise CrossattnError(f"the model returns {type(output).__name__}, not one tensor")
    return output.numpy().copy()


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Math-library threads for a while (as torch's adapter); paddle has no getter, and its own default is
    OMP_NUM_THREADS, which paddle sets to 1 at import when unset: that is what is restored."""
    import os

    paddle.base.core.set_num_threads(count)
    try:
        yield
    finally:
        paddle.base.core.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
