"""A float64 comparison step keeps a model's own casts of float64 tensors to float32 in float64 (paddle's twin of
`torch_impl.float64_casts`, which says why).

paddle has no function mode, so within `float64_kept` the casts are replaced on `paddle.Tensor` and `paddle`:
`x.astype('float32')`, `x.cast(...)`, `x.float()`, `paddle.cast(x, ...)`. Only the model's own calls are kept
(paddle's own code casts as it does).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import paddle

from crossattn.conventions import KEPT_CAST

_PATCHED = ((paddle.Tensor, "astype"), (paddle.Tensor, "cast"), (paddle.Tensor, "float"), (paddle, "cast"))


def _is_float32(dtype: Any) -> bool:
    try:
        return paddle.base.framework.convert_np_dtype_to_dtype_(dtype) == paddle.float32
    except (TypeError, ValueError, AttributeError):
        return dtype == paddle.float32


def _kept(original: Callable, name: str, kept: set[str]) -> Callable:
    @functools.wraps(original)
    def cast(x: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = args[0] if args else kwargs.get("dtype", paddle.float32 if name == "float" else None)
        if isinstance(x, paddle.Tensor) and x.dtype == paddle.float64 and len(args) + len(kwargs) <= 1 \
                and _is_float32(dtype):
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if module != "paddle" and not module.startswith("paddle."):
                kept.add(f"{KEPT_CAST}`{name}` in {caller.f_code.co_name} ({module}:{caller.f_lineno})")
                return x
        return original(x, *args, **kwargs)

    return cast


@contextlib.contextmanager
def float64_kept(kept: set[str], enabled: bool = True) -> Iterator[set[str]]:
    """Within (when `enabled`: a float64 step): the model's casts of float64 tensors to float32 return the tensor,
    each recorded in `kept`."""
    if not enabled:
        yield kept
        return
    originals = [(owner, name, getattr(owner, name)) for owner, name in _PATCHED if hasattr(owner, name)]
    for owner, name, original in originals:
        setattr(owner, name, _kept(original, name, kept))
    try:
        yield kept
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
