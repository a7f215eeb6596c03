"""torch's dropout functions in a comparison step, each call recorded (`crossattn.dropout_calls`).

Applied by `comparison_calls`' torch function mode, so every route reaches it:
`F.dropout(x, p, training=self.training)` (an `nn.Dropout` layer's too),
`torch.dropout(x, p, train)`, an attention's `dropout_p`. Plain dropout is
applied with a mask from the stream both frameworks share (the n-th call's
mask the same array in both, kept where the uniform value is above p, scaled by
1 / (1 - p)), so where it sits and how it scales are compared like any op; the
other kinds (channel, alpha, attention dropout) run as at inference. A call with
dropout off (`training=False`, or an attention's rate of 0) runs as written and
is not recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F

from crossattn.dropout_calls import DropoutCalls, bernoulli


@dataclasses.dataclass(frozen=True)
class _Call:
    kind: str  # the name both frameworks' records share
    rate: tuple[int, str, float]  # (position, keyword, default)
    #: (position, keyword, default) of the flag turning dropout on; None: on whenever the rate is above 0
    training: tuple[int, str, bool] | None

    def argument(self, spec: tuple[int, str, Any], args: tuple, kwargs: dict) -> Any:
        position, keyword, default = spec
        if keyword in kwargs:
            return kwargs[keyword]
        return args[position] if len(args) > position else default

    def held(self, func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The arguments with dropout turned off."""
        position, keyword, _ = self.training or self.rate
        off = False if self.training else 0.0
        if len(args) > position:
            return args[:position] + (off,) + args[position + 1:], kwargs
        return args, {**kwargs, keyword: off}


def _dropout(kind: str, training_default: bool = True) -> _Call:
    return _Call(kind, (1, "p", 0.5), (2, "training", training_default))


def _builtin(kind: str) -> _Call:  # torch.dropout(input, p, train): every argument required
    return _Call(kind, (1, "p", 0.5), (2, "train", True))


HELD_DROPOUT: dict[Callable, _Call] = {
    F.dropout: _dropout("dropout"),
    F.dropout1d: _dropout("dropout1d"),
    F.dropout2d: _dropout("dropout2d"),
    F.dropout3d: _dropout("dropout3d"),
    F.alpha_dropout: _dropout("alpha_dropout", training_default=False),
    F.feature_alpha_dropout: _dropout("feature_alpha_dropout", training_default=False),
    torch.dropout: _builtin("dropout"),
    torch.dropout_: _builtin("dropout"),
    torch.alpha_dropout: _builtin("alpha_dropout"),
    torch.alpha_dropout_: _builtin("alpha_dropout"),
    torch.feature_dropout: _builtin("feature_dropout"),
    torch.feature_dropout_: _builtin("feature_dropout"),
    torch.feature_alpha_dropout: _builtin("feature_alpha_dropout"),
    torch.feature_alpha_dropout_: _builtin("feature_alpha_dropout"),
    F.scaled_dot_product_attention: _Call("attention dropout", (4, "dropout_p", 0.0), None),
    F.multi_head_attention_forward: _Call("attention dropout", (10, "dropout_p", 0.0), (13, "training", True)),
}


#: the functions whose dropout is applied with the shared stream's mask (elementwise, scaled by 1 / (1 - p))
MASKED = (F.dropout, torch.dropout, torch.dropout_)


def dropout_call(func: Callable, args: tuple, kwargs: dict, calls: DropoutCalls) -> Any:
    """`func` with the shared mask (plain dropout) or its dropout off (the other kinds), recorded in `calls`
    when the call had it on."""
    call = HELD_DROPOUT[func]
    rate = float(call.argument(call.rate, args, kwargs))
    on = bool(call.argument(call.training, args, kwargs)) if call.training is not None else rate > 0
    if not on:
        return func(*args, **kwargs)
    calls.record(call.kind, rate)
    if func in MASKED:
        x = args[0] if args else kwargs["input"]
        in_place = func is torch.dropout_ or (func is F.dropout and bool(call.argument((3, "inplace", False), args,
                                                                                     kwargs)))
        return masked_dropout(x, rate, calls, in_place)
    held_args, held_kwargs = call.held(func, args, kwargs)
    return func(*held_args, **held_kwargs)


def masked_dropout(x: torch.Tensor, rate: float, calls: DropoutCalls, in_place: bool = False) -> torch.Tensor:
    """x times the shared stream's keep mask over 1 - p (all zeros at p = 1), as torch's dropout scales."""
    keep = 1.0 - rate
    mask = bernoulli(calls.uniform("dropout", tuple(x.shape)), keep)
    scale = torch.from_numpy(mask / keep if keep > 0 else mask * 0.0).to(dtype=x.dtype, device=x.device)
    return x.mul_(scale) if in_place else x * scale
