"""Training stops at the first non-finite loss, gradient or evaluation instead of saving NaN weights.

The twins' loops call `check_step` once per step with two booleans their
framework computed (torch_impl/finite.py, paddle_impl/finite.py); the runner
turns the first failure into `TrainingDiverged` naming the epoch and step and
the last good checkpoint, which stays untouched (nothing of the failing epoch is
written). Each check reads one flag back from the device per step: a small sync
that buys a run that never overwrites good checkpoints with NaN ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from crossattn.errors import TrainingDiverged


class NonFinite(Exception):
    """Raised inside an epoch; the runner adds the epoch and the run's state to it."""

    def __init__(self, what: str, step: int | None) -> None:
        super().__init__(what)
        self.what = what
        self.step = step


def check_step(step: int, loss_finite: bool, grads_finite: bool = True) -> None:
    """Stop at `step` (1-based within the epoch) when its loss or gradients are not finite."""
    if not loss_finite:
        raise NonFinite("the loss is not finite (NaN or infinite)", step)
    if not grads_finite:
        raise NonFinite("a gradient is not finite (NaN or infinite)", step)


@contextlib.contextmanager
def stops_run(run: Path, epoch: int, per_epoch: int, config: Any) -> Iterator[None]:
    """Around one epoch's steps: a NonFinite from the loop becomes the user-facing TrainingDiverged."""
    try:
        yield
    except NonFinite as exc:
        raise diverged(exc, run, epoch, per_epoch, config) from None


def check_epoch(result: Mapping[str, Any], run: Path, epoch: int, per_epoch: int, config: Any) -> None:
    """An epoch whose mean training loss or evaluation loss is not finite is not saved."""
    for key in ("train_loss", "val_loss"):
        value = result.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            what = f"the {'mean training' if key == 'train_loss' else 'evaluation'} loss is {value}"
            raise diverged(NonFinite(what, None), run, epoch, per_epoch, config)


def diverged(exc: NonFinite, run: Path, epoch: int, per_epoch: int, config: Any) -> TrainingDiverged:
    """The user-facing error: where it happened, what was kept, what to change."""
    from crossattn.training.run_dir import latest_checkpoint

    last_good = latest_checkpoint(run)
    where = f"epoch {epoch}/{config.epochs}" + (f", step {exc.step}/{per_epoch}" if exc.step is not None else
                                                " (after its last step)")
    kept = (f"the last good checkpoint, {last_good[1]} (epoch {last_good[0]}), is kept" if last_good is not None
            else "no checkpoint was written (no epoch had finished)")
    return TrainingDiverged(
        f"training stopped at {where}: {exc.what}. Nothing of epoch {epoch} was saved; {kept}. The run diverged: "
        f"lower lr (now {config.lr:g}) or add warm-up in a new run")
