"""A float64 comparison step keeps a model's own casts of float64 tensors to float32 in float64.

Models often compute a part in float32 on purpose (`attn.float().softmax(-1).type_as(x)`): at the dtype users
run, float32, the cast does nothing. In a float64 step (check's float64 cases, the float32 rule's truths) it
would round that part to float32 on one side only, and an equal pair failed by 1e-8 of scale in both dtypes.
Only the model's own calls are kept (torch's own modules and functions cast as they do): `Tensor.float()`,
`Tensor.to(torch.float32)` and `Tensor.type(torch.float32)` with no other change.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from crossattn.conventions import KEPT_CAST as KEPT

CASTS = (torch.Tensor.float, torch.Tensor.to, torch.Tensor.type)


def _to_float32(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether the call only casts its tensor to float32."""
    if func is torch.Tensor.float:
        return len(args) == 1 and not kwargs
    target = kwargs.get("dtype", args[1] if len(args) > 1 else None)
    other = {k: v for k, v in kwargs.items() if k != "dtype"}
    if func is torch.Tensor.type:
        return len(args) <= 2 and not other and target in (torch.float32, "torch.FloatTensor")
    return len(args) <= 2 and not other and target is torch.float32


def kept_cast(func: Callable, args: tuple, kwargs: dict, kept: set[str]) -> Any | None:
    """The tensor itself for a model's cast of a float64 tensor to float32 (recorded in `kept`), else None."""
    tensor = args[0] if args else None
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float64 or not _to_float32(func, args, kwargs):
        return None
    caller = sys._getframe(2)
    module = caller.f_globals.get("__name__", "")
    if module == "torch" or module.startswith("torch."):
        return None
    kept.add(f"{KEPT}`{func.__name__}` in {caller.f_code.co_name} ({module}:{caller.f_lineno})")
    return tensor
