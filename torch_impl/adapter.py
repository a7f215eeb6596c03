"""What crossattn's framework-neutral engines need from torch: slots, state, one step.

Mirrors paddle_impl/adapter.py function for function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from crossattn.dropout_calls import DropoutCalls
from crossattn.errors import CrossattnError, TransferError, forward_of
from crossattn.tracing import LayerTrace, call_key
from torch_impl.comparison_calls import comparison_calls
from torch_impl.layers import ZERO_INIT_ATTR
from weight_transfer.slots import Slot, join, state_problems, with_aliases

FRAMEWORK = "torch"
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
    #: constants of the model's calls given the float32 value paddle applies (`torch_impl.paddle_constants`)
    rounded: list[str] = dataclasses.field(default_factory=list)
    #: dropout held off, with its rates: layers in a train-mode step (`set_train_mode`), and in any step dropout
    #: called as a function with dropout on (`torch_impl.functional_dropout`)
    held_dropout: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the random tensors the forward drew, given the stream both frameworks share (`crossattn.dropout_calls`)
    shared_draws: list[str] = dataclasses.field(default_factory=list)


def setup(device: str = "cpu") -> None:
    """Checks run on the CPU; torch needs no global switch for that (tensors are created there)."""


def to_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """Cast every parameter and buffer (checks run in float64 so rounding is not mistaken for divergence)."""
    return model.to(dtype=getattr(torch, dtype))


def layer_kind(module: nn.Module) -> str:
    declared = getattr(module, KIND_ATTR, None)
    if declared:
        return declared
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "instancenorm"
    if isinstance(module, nn.PReLU):
        return "prelu"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    return "other"


def slots(model: nn.Module) -> dict[str, Slot]:
    """Every state tensor of `model`, with the kind of the layer that owns it."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    table: dict[str, Slot] = {}
    seen: dict[int, str] = {}  # a tensor already in the table: a shared module's or a tied parameter's
    aliases: dict[str, list[str]] = {}
    for layer_name, module in model.named_modules(remove_duplicate=False):
        kind = layer_kind(module)
        zero = bool(getattr(module, ZERO_INIT_ATTR, False))
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for name, tensor in tensors:
            if name in module._non_persistent_buffers_set or tensor is None:
                continue
            key = join(layer_name, name)
            if id(tensor) in seen:
                aliases.setdefault(seen[id(tensor)], []).append(key)
                continue
            seen[id(tensor)] = key
            table[key] = Slot(key, layer_name, name, kind, tuple(tensor.shape),
                              _dtype_name(tensor), key in trainable, zero)
    for key, names in aliases.items():
        table[key] = dataclasses.replace(table[key], aliases=tuple(names))
    return table


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, each tensor once, under its first key (`Slot.aliases` are the others its state
    dict also holds it under: a shared module, a tied parameter)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[key] = tensor
    return out


def _retie(model: nn.Module, own: Mapping[str, Slot]) -> None:
    """Each alias made the very tensor of its slot again (loading with assign=True gives every key its own)."""
    for key, slot in own.items():
        for alias in slot.aliases:
            owner, _, name = key.rpartition(".")
            layer, _, attr = alias.rpartition(".")
            tensor = getattr(model.get_submodule(owner), name)
            target = model.get_submodule(layer)
            if getattr(target, attr) is not tensor:
                if isinstance(tensor, nn.Parameter):
                    target.register_parameter(attr, tensor)
                else:
                    target.register_buffer(attr, tensor)


def padding_rows(model: nn.Module) -> dict[str, int]:
    """Each embedding weight with a padding index, and that row: zero as built and never trained."""
    return {join(name, "weight"): int(module.padding_idx) % module.num_embeddings
            for name, module in model.named_modules()
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.padding_idx is not None}


def layer_names(model: nn.Module) -> set[str]:
    """Every module's dotted name ("" for the model itself), parameterless ones included: a name map may name
    any of them (a shared module under each of its names)."""
    return {name for name, _ in model.named_modules(remove_duplicate=False)}


def _dtype_name(tensor: torch.Tensor) -> str:
    """numpy's name of the tensor's dtype, read without copying data (and valid on the meta device)."""
    return str(tensor.dtype).removeprefix("torch.")


def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in _state_tensors(model).items()}


def _untrained_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The state a step may change: all but the trainable parameters (copying those is most of a copy)."""
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().numpy().copy() for k, v in _state_tensors(model).items() if k not in trained}


def _c_order(value: np.ndarray) -> np.ndarray:
    """C order, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d, which paddle then skips
    loading with only a warning)."""
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")


def load_state(model: nn.Module, values: Mapping[str, np.ndarray]) -> None:
    """Load exactly the model's keys with exactly its shapes, or raise naming each problem."""
    own = slots(model)
    problems = state_problems(own, values)
    if problems:
        raise TransferError(problems, "loading torch state")
    tensors = {k: torch.from_numpy(_c_order(v)) for k, v in values.items()}
    model.load_state_dict(with_aliases(tensors, own), strict=True)


def _bn_batch_hooks(model, batches: dict[str, list]) -> list:
    """Record each BatchNorm call's batch statistics (train mode), for the running-statistics rule."""
    handles = []
    for name, module in model.named_modules():
        if layer_kind(module) == "batchnorm":
            def hook(mod, inputs, name=name):
                values = inputs[0].detach().numpy().astype(np.float64)
                values = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
                batches.setdefault(name, []).append((values.mean(axis=1), values.var(axis=1), values.shape[1]))
            handles.append(module.register_forward_pre_hook(hook))
    return handles


def dropout_calls(model: nn.Module) -> DropoutCalls:
    """A record of the dropout calls a step of `model` holds off, each named by its layer."""
    return DropoutCalls(lambda: {id(module): name for name, module in model.named_modules()})


def _forward_backward(model: nn.Module, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray],
                      rounded: set[str] | None = None,
                      dropouts: DropoutCalls | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward `x`, then backward sum(output * cotangent); returns (input, output) tensors. The convolutions
    for which torch's own kernel choice is slow run in channels-last layout (`torch_impl.conv_layout`),
    constants paddle holds in float32 take that value (`torch_impl.paddle_constants`, noted in `rounded`), and
    dropout called as a function is held off (into `dropouts`)."""
    inputs = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    with comparison_calls(rounded, dropouts, float64=x.dtype == np.float64):
        with forward_of("torch", x.shape):
            output = model(inputs)
    if not torch.is_tensor(output):
        raise CrossattnError(f"the model returns {type(output).__name__}, not one tensor; check and diff compare "
                             f"a single output (wrap the model to return the tensor to compare)")
    weight = torch.from_numpy(cotangent(tuple(output.shape)))
    model.zero_grad(set_to_none=True)
    (output * weight).sum().backward()
    return inputs, output


def _take_grads(model: nn.Module, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Each trainable parameter's gradient, handed over instead of copied: the parameter lets go of it (the
    next backward allocates a new one), so the array is the result's alone."""
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name] = p.grad.detach().numpy() if p.grad is not None else np.zeros(tuple(p.shape), dtype)
            p.grad = None
    return grads


def set_train_mode(model: nn.Module, train: bool) -> dict[str, float]:
    """Train or eval mode. Plain dropout layers stay in it: their call takes the mask of the stream both
    frameworks share (under `comparison_calls`); the other dropout kinds are held off (identity), as no two
    frameworks draw their masks alike. Returns each dropout layer so held, with its rate (an attention layer's own
    dropout of its weights too, and a recurrent layer's between its layers: they have no other train-mode
    behaviour)."""
    model.train(train)
    held = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            continue  # plain dropout: the shared stream's mask (`torch_impl.functional_dropout`)
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
            held[name] = float(module.p)
        elif isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
            module.eval()
            held[name] = float(module.dropout)
    return held


def bn_momenta(model: nn.Module) -> dict[str, float | None]:
    """Each BatchNorm layer's weight of a new batch in its running statistics (torch's `momentum`; None: a
    cumulative average)."""
    return {name: (None if module.momentum is None else float(module.momentum))
            for name, module in model.named_modules() if layer_kind(module) == "batchnorm"}


def step(model: nn.Module, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray],
         train: bool) -> StepResult:
    """One forward in train or eval mode (dropout held off) and a backward of sum(output * cotangent)."""
    held = set_train_mode(model, train)
    batches: dict[str, list] = {}
    rounded: set[str] = set()
    dropouts = dropout_calls(model)
    handles = _bn_batch_hooks(model, batches) if train else []
    try:
        inputs, output = _forward_backward(model, x, cotangent, rounded, dropouts)
    finally:
        for handle in handles:
            handle.remove()
    grads = _take_grads(model, x.dtype)
    input_grad = inputs.grad.numpy().copy() if inputs.grad is not None else np.zeros_like(x)
    return StepResult(output.detach().numpy().copy(), input_grad, grads, _untrained_state(model), batches,
                      sorted(rounded), {**(held if train else {}), **dropouts.held}, list(dropouts.draws))


def trace(model: nn.Module, x: np.ndarray, cotangent: Callable[[tuple[int, ...]], np.ndarray], train: bool,
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

    def pre_hook(module, args, name):
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
            b = a + (torch.from_numpy(next(given)).to(a.dtype) - a).detach() if given is not None else a * 1.0
            if b.requires_grad:
                index = len(slots)
                slots.append(None)

                def input_grad_hook(grad, key=key, index=index):
                    slots[index] = grad.detach().numpy().copy()
                    record.input_grads[key] = [s for s in slots if s is not None]
                    record.grad_events.append(("input_grad", key))
                b.register_hook(input_grad_hook)
            replaced.append(b)
        return tuple(replaced)

    def post_hook(module, args, output, name):
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
        if tensor.requires_grad:
            def grad_hook(grad, key=key):
                record.grads[key] = grad.detach().numpy().copy()
                record.grad_events.append(("grad", key))
                if feed_grads is not None and key in feed_grads:
                    # a copy: autograd may accumulate into it, and the array belongs to the reference trace
                    return torch.tensor(feed_grads[key], dtype=grad.dtype)
                return None
            tensor.register_hook(grad_hook)

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: pre_hook(m, a, name)))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: post_hook(m, a, o, name)))
    if train:  # registered after the feeding hooks: a fed BatchNorm records the statistics it normalised with
        handles += _bn_batch_hooks(model, record.bn_batches)
    rounded: set[str] = set()
    dropouts = dropout_calls(model)
    try:
        inputs, output = _forward_backward(model, x, cotangent, rounded, dropouts)
    finally:
        for handle in handles:
            handle.remove()
    record.rounded = sorted(rounded)
    record.held_dropout = dict(dropouts.held)
    record.output = output.detach().numpy().copy()
    record.input_grad = inputs.grad.numpy().copy() if inputs.grad is not None else np.zeros_like(x)
    record.param_grads = _take_grads(model, x.dtype)
    record.state_after = state(model)
    return record


def _is_float(value) -> bool:
    return torch.is_tensor(value) and value.is_floating_point()


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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def lazy() -> Iterator[None]:
    """Models built inside have shapes and dtypes but no storage (the meta device): slots cost nothing."""
    with torch.device("meta"):
        yield


def materialise_lazy(model: nn.Module, input_shape: tuple[int, ...] | None) -> bool | None:
    """Give a model's lazy modules their shapes by one forward of zeros (eval mode, no gradient, every module's
    own mode restored after); True when there were any, False when there were none, None when they need an
    input shape that is not given."""
    if not any(is_lazy(t) for t in itertools.chain(model.parameters(), model.buffers())):
        return False
    if input_shape is None:
        return None
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape)))
    finally:
        for module, training in modes.items():
            module.training = training
    return True


def uncovered(model: nn.Module) -> list[str]:
    """Tensors of a lazily built model that no state can give storage to (non-persistent buffers)."""
    keys = set(model.state_dict())
    return [n for n, _ in list(model.named_parameters()) + list(model.named_buffers()) if n not in keys]


def load_lazy(model: nn.Module, values: MutableMapping[str, np.ndarray], consume: bool = False) -> nn.Module:
    """Give a lazily built model the storage of `values`.

    With `consume` the arrays are handed over: parameters share them (a
    forward does not write parameters, so a checkpoint costs no second copy);
    without it every tensor is a copy, so nothing the model is later loaded
    with reaches `values`. Buffers (running statistics, which a train-mode
    forward moves) are always copies. Raises CrossattnError if a tensor the
    state does not cover is left without storage.
    """
    own = slots(model)
    problems = state_problems(own, values)
    if problems:
        raise TransferError(problems, "loading torch state")
    buffers = {name for name, _ in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only arrays (memory-mapped files): parameters are only read
        tensors = {k: torch.from_numpy(np.array(v) if k in buffers or not consume else _c_order(v))
                   for k, v in values.items()}
        model.load_state_dict(with_aliases(tensors, own), strict=True, assign=True)
    _retie(model, own)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CrossattnError(f"tensors {', '.join(left[:5])} have no value in the state (non-persistent buffers "
                             f"built on the meta device)")
    return model


def forward(model: nn.Module, x: np.ndarray, train: bool) -> np.ndarray:
    """The output alone (no graph kept): what a conversion's verification compares."""
    model.train(train)
    with torch.no_grad():
        with forward_of("torch", x.shape):
            output = model(torch.from_numpy(np.ascontiguousarray(x)))
    if not torch.is_tensor(output):
        raise CrossattnError(f"the model returns {type(output).__name__}, not one tensor")
    return output.numpy().copy()


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Intra-op threads for a while: a small forward gains nothing from more, and on a busy machine each
    parallel region waits for a free core (a 64-pixel SE-ResNet-152 forward: 0.14 s on one thread, 2-5 s on
    two under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
