"""Memory estimates made before anything is allocated, so an impossible size is a clear refusal.

A spec or training config can name sizes (input_shape, channel counts, image_size,
batch_size) whose tensors would exhaust memory or overflow the frameworks' size
arithmetic; allocating them first gives a framework traceback, a MemoryError or
the kernel's OOM killer. Here the footprint is estimated first:

* without any framework: a lower bound from the input alone (validate uses it);
* with torch installed: the model is built on torch's `meta` device (shapes, no
  storage), which counts every parameter and buffer exactly, and, for inputs big
  enough to matter, run there once, counting every tensor the forward creates (an
  attention block's affinity matrix included); the estimate is those counts times
  the copies a command holds. Twins mirror each other, so torch's count stands for
  paddle's. A paddle-only install gets the framework-free bound only.

The budget is the memory available now (MemAvailable), or CROSSATTN_MEMORY_LIMIT
(bytes, or a number with K/M/G/T) where a user wants a smaller one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from crossattn.errors import CrossattnError, OptionError

LIMIT_ENV = "CROSSATTN_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class TooLarge(CrossattnError):
    """Sizes whose tensors cannot fit in memory (or overflow the frameworks' size arithmetic)."""


def gib(n: float) -> str:
    """A byte count in GiB, or in MiB / KiB / bytes where GiB would round to 0.0."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= (1 << shift) / 10:
            return f"{n / (1 << shift):,.1f} {unit}"
    return f"{int(n):,} bytes"


def memory_budget() -> int:
    """Bytes a command may plan to use: CROSSATTN_MEMORY_LIMIT, else the memory available now."""
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", limit, re.IGNORECASE)
        if not match:
            raise CrossattnError(f"{LIMIT_ENV}={limit!r}: expected bytes or a number with K, M, G or T (e.g. 8G)")
        return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse on memory


def elements(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def refuse_over_budget(needed: int, what: str, where: str, key: str) -> None:
    budget = memory_budget()
    if needed > budget:
        raise TooLarge(f"{where}, key `{key}`: {what} needs about {gib(needed)}, more than the {gib(budget)} "
                       f"of memory available (set {LIMIT_ENV} to change the budget); use smaller sizes")


def input_lower_bound(shape: Sequence[int], itemsize: int = 8) -> int:
    """The input and its gradient in both frameworks: no check of that shape can need less."""
    return 4 * elements(shape) * itemsize


#: inputs below this many N x positions^2 (an attention block's affinity) skip the meta forward: the
#: parameters are counted, and activations that small cannot matter (the forward costs a one-time 2 s)
FORWARD_GATE = 1 << 26


def meta_footprint(spec: Any, input_shape: Sequence[int] | None, parameters_dominate: bool = False,
                   built: Callable[[Any], None] | None = None) -> tuple[int, int] | None:
    """(parameter + buffer elements, elements of every tensor the forward creates) from a torch meta build.

    None when torch is not installed. The forward is run on the meta device only for
    inputs big enough to matter (FORWARD_GATE); it counts every intermediate tensor, an
    attention block's affinity matrix included, so it overestimates the peak. A forward
    that cannot run on meta tensors counts 0 (the parameters still count). A size the
    framework cannot even represent raises TooLarge. `parameters_dominate` (convert: one
    forward without a graph) lets a small input skip the forward whatever the model's size:
    the first meta forward in a process costs about 1.4 s, most of a conversion's time.
    `built` is given the torch model built on the meta device (its slots cost no second build).
    """
    try:
        import torch
    except ImportError:  # a paddle-only install: only the framework-free bounds apply
        return None

    from crossattn import registry

    where = spec.path or spec.name
    try:
        with torch.device("meta"), _counting_layers(torch, where, spec):
            model = registry.build(spec, "torch")
    except CrossattnError:
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError, IndexError) as exc:
        raise TooLarge(f"{where}, key `{largest_option(spec.options)}`: the options give tensors the framework "
                       f"cannot create ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                       f"use smaller sizes") from None
    if built is not None:
        built(model)
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    if input_shape is None:
        return params, 0
    positions = elements(input_shape[2:])
    small = (input_shape[0] * positions * positions < FORWARD_GATE and elements(input_shape) < 1 << 20
             and (parameters_dominate or params < 1 << 22) and int(largest_value(spec.options)) < 1 << 12)
    if small:
        return params, 0
    return params, _forward_elements(torch, model, tuple(input_shape), where, spec)


#: more layers than this is no model anyone checks (SE-ResNet-152 has about 1,000): a count option gone wild
MAX_LAYERS = 100_000


class _CountExceeded(Exception):
    pass


@contextlib.contextmanager
def _counting_layers(torch: Any, where: str, spec: Any) -> Iterator[None]:
    """Stop a build that registers more than MAX_LAYERS layers before it runs for hours."""
    count = [0]

    def hook(module: Any, name: str, submodule: Any) -> None:
        count[0] += 1
        if count[0] > MAX_LAYERS:
            raise _CountExceeded

    handle = torch.nn.modules.module.register_module_module_registration_hook(hook)
    try:
        yield
    except _CountExceeded:
        raise TooLarge(f"{where}, key `{largest_option(spec.options)}`: the options build more than "
                       f"{MAX_LAYERS:,} layers; use smaller counts") from None
    finally:
        handle.remove()


@contextlib.contextmanager
def _heap_limited(extra: int) -> Iterator[None]:
    """Lower the soft data-segment limit to what is in use now plus `extra` (Linux): an allocation of
    real memory beyond it (numpy maps a forward computes from the input size) fails with MemoryError
    instead of taking the machine's memory."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        with open("/proc/self/status", encoding="ascii") as handle:
            used = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmData:"))
        limit = used + extra
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft != resource.RLIM_INFINITY and soft < limit:
            limit = soft
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ImportError, OSError, ValueError, StopIteration):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _forward_elements(torch: Any, model: Any, shape: tuple[int, ...], where: str, spec: Any) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    aten = torch.ops.aten
    reductions = {aten.mean.dim, aten.sum.dim_IntList}
    batch_norms = {aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
                   aten._native_batch_norm_legit.no_stats, aten._native_batch_norm_legit_no_training.default}

    class Count(TorchDispatchMode):
        total = 0

        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # else torch wraps __torch_dispatch__ in dynamo's disable, whose
            return False                        # first call imports torch._dynamo (about 1 s): nothing compiles here

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in batch_norms:  # its meta kernel is a slow Python decomposition (1 s of SE-ResNet-152's
                x = args[0]          # forward); the outputs are the input's shape and two per-channel vectors
                out = (torch.empty_like(x), x.new_empty((x.shape[1],)), x.new_empty((x.shape[1],)))
            elif func is aten.addmm.default:  # a Linear layer. This and the ops below have Python meta kernels
                out = args[1].new_empty((args[1].shape[0], args[2].shape[1]))
            elif func is aten.native_layer_norm.default:
                x, kept = args[0], args[0].dim() - len(args[1])
                stats = (*x.shape[:kept], *[1] * len(args[1]))
                out = (torch.empty_like(x), x.new_empty(stats), x.new_empty(stats))
            elif func in reductions and args[0].is_floating_point():
                out = args[0].new_empty(_reduced_shape(args[0].shape, *args[1:3], **(kwargs or {})))
            elif torch.Tag.pointwise in func.tags and _same_dtype_pointwise(torch, func, args):
                # torch's meta kernels of these are Python references whose first call imports
                # torch._dynamo (about 1 s); the result is the inputs' broadcast shape, or the input in place
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                out = args[0] if func._schema.name.endswith("_") else \
                    tensors[0].new_empty(torch.broadcast_shapes(*(t.shape for t in tensors)))
            else:
                out = func(*args, **(kwargs or {}))
            Count.total += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    import inspect

    inputs = [p for p in inspect.signature(model.forward).parameters.values()
              if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    try:
        with torch.device("meta"), torch.no_grad(), _heap_limited(memory_budget()):
            x = torch.empty(shape)
            with Count():
                model(*[x] * max(len(inputs), 1))  # fusion blocks take x and a residual of one shape
    except MemoryError:
        raise TooLarge(f"{where}, key `input_shape`: the forward at input_shape {list(shape)} computes arrays "
                       f"beyond the {gib(memory_budget())} of memory available; use smaller sizes") from None
    except RuntimeError as exc:
        text = str(exc)
        if any(word in text for word in ("overflow", "Storage size", "negative dimension", "too large")):
            raise TooLarge(f"{where}, key `{largest_option(spec.options)}`: the forward at input_shape "
                           f"{list(shape)} makes tensors the framework cannot create ({text.splitlines()[0][:160]}); "
                           f"use smaller sizes") from None
        return 0  # an op meta tensors do not support; the parameters still count
    except Exception:  # noqa: BLE001 - meta tensors do not support every op; the parameters still count
        return 0
    return Count.total


def _reduced_shape(shape: Sequence[int], dims: Sequence[int] | None = None, keepdim: bool = False,
                   **_: Any) -> tuple[int, ...]:
    """The shape of a sum or mean over `dims` (None or empty: all)."""
    axes = {d % len(shape) for d in dims} if dims else set(range(len(shape)))
    return tuple(1 if i in axes else n for i, n in enumerate(shape) if keepdim or i not in axes)


#: pointwise ops whose result is not of their inputs' floating dtype
_NOT_SAME_DTYPE = ("eq", "ne", "lt", "le", "gt", "ge", "logical_", "bitwise_", "is", "signbit", "where", "copysign")


def _same_dtype_pointwise(torch: Any, func: Any, args: Sequence[Any]) -> bool:
    """A pointwise op on floating tensors of one dtype whose result has that dtype (relu, add, mul, sigmoid),
    in place only where it returns its first argument; anything else runs torch's meta kernel."""
    name = func._schema.name.split("::")[-1]
    written = [a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments]
    if name.startswith(_NOT_SAME_DTYPE) or any(written[1:]) or (written and written[0]) != name.endswith("_"):
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and isinstance(args[0], torch.Tensor) and all(
        t.dtype == tensors[0].dtype and t.is_floating_point() for t in tensors) and not any(
        isinstance(a, (list, tuple)) for a in args)


def require_check_fits(spec: Any, command: str = "check", parameters_dominate: bool = False,
                       built: Callable[[Any], None] | None = None) -> None:
    """Refuse a spec whose float64 twins, input and gradients cannot fit in memory (check, diff, convert);
    `built` as in `meta_footprint`."""
    where = spec.path or spec.name
    shape = spec.input_shape
    if shape is not None:
        refuse_over_budget(input_lower_bound(shape), f"`{command}` with input_shape {list(shape)}", where,
                           "input_shape")
    found = meta_footprint(spec, shape, parameters_dominate, built)
    if found is None:
        return
    params, activations = found
    # float64 in both frameworks. Per parameter about ten copies are alive at the peak (each framework's
    # value and gradient, the numpy initial state, state dicts read back and transferred); per forward
    # value two (the value kept for backward and its gradient) in each framework. On SE-ResNet-152 this
    # predicts 5.7 GB against a measured peak RSS of 3.5 GB (an upper bound, since check
    # shares steps between directions and keeps only the custom tensors of a model as built).
    needed = 8 * (10 * params + 4 * activations) + (input_lower_bound(shape) if shape is not None else 0)
    what = (f"`{command}` ({params:,} parameter values, {activations:,} values computed by the forward"
            f"{' at input_shape ' + str(list(shape)) if shape is not None else ''})")
    key = largest_option(spec.options) if shape is None or params * 4 > activations else "input_shape"
    refuse_over_budget(needed, what, where, key)


#: image height and width of each dataset kind
IMAGE_HW = {"cifar10": (32, 32), "mnist": (28, 28)}


def require_training_fits(spec: Any, config: Any, config_file: str = "the training config") -> None:
    """Refuse a run whose model, optimizer state, batch activations and data cannot fit in memory."""
    where = spec.path or spec.name
    image_hw = IMAGE_HW[config.data_kind]
    size = config.image_size
    height, width = (size, size) if size is not None else image_hw
    itemsize = 8 if config.dtype == "float64" else 4
    batch_shape = (config.batch_size, config.channels, height, width)
    try:  # a model built for one image size (mnist_non_local's image_size) must get that size
        spec.options.check_input_shape(batch_shape)
    except OptionError as exc:
        raise CrossattnError(f"{where}: the model cannot take the training images ({height}x{width} after "
                             f"`image_size` in {config_file}): {exc.message}") from None
    if config.dataset == "synthetic":
        images = (config.synthetic_train + config.synthetic_test) * config.channels * image_hw[0] * image_hw[1]
        refuse_over_budget(2 * images, f"synthetic data of {config.synthetic_train:,} + {config.synthetic_test:,} "
                                       f"images", config_file, "synthetic_train")
    # the batch as floats, its resized copy and its gradient
    refuse_over_budget(3 * elements(batch_shape) * itemsize, f"a batch of {list(batch_shape)}", config_file,
                       "image_size" if size is not None else "batch_size")
    found = meta_footprint(spec, batch_shape)
    if found is None:
        return
    params, activations = found
    # weights, gradients and two optimizer moments; forward values kept for backward and their gradients
    needed = itemsize * (4 * params + 2 * activations)
    if params * 4 > activations:  # the model itself is the problem
        refuse_over_budget(needed, f"training ({params:,} parameter values)", where, largest_option(spec.options))
    key = "image_size" if size is not None else "batch_size"
    refuse_over_budget(needed, f"training ({params:,} parameter values, {activations:,} values computed per "
                               f"batch of {list(batch_shape)})", config_file, key)



def largest_value(options: Any) -> int:
    """The largest integer among the options (nested blocks included)."""
    return _largest(options, "options")[0]


def largest_option(options: Any, prefix: str = "options") -> str:
    """The key path of the largest integer among the options (nested blocks included): the likely culprit."""
    return _largest(options, prefix)[1]


def _largest(options: Any, prefix: str) -> tuple[int, str]:
    import dataclasses

    best: tuple[int, str] = (-1, prefix)

    def walk(value: Any, path: str) -> None:
        nonlocal best
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            best = max(best, (value, path))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif dataclasses.is_dataclass(value):
            inner = getattr(value, "options", None)
            if inner is not None and dataclasses.is_dataclass(inner) and hasattr(value, "type"):
                walk(inner, f"{path}.options")  # a nested spec
                return
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), f"{path}.{field.name}")

    walk(options, prefix)
    return best


def require_pair_fits(pair: Any, command: str = "check", with_input: bool = True,
                      parameters_dominate: bool = False) -> None:
    """`require_check_fits` for a model pair: a spec's twins in full, a user's pair by its input size."""
    shape = pair.input_shape if with_input else None
    if pair.spec is not None:
        require_check_fits(dataclasses.replace(pair.spec, input_shape=shape), command, parameters_dominate,
                           lambda model: pair.remember_slots("torch", model))
    elif shape is not None:
        refuse_over_budget(input_lower_bound(shape), f"`{command}` with --input-shape {list(shape)}", pair.origin,
                           "--input-shape")
