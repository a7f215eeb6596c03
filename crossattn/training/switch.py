"""Continue a run in the other framework: the newest checkpoint translated, or a clear refusal.

Weights and BatchNorm statistics go through weight_transfer's parameter rules,
the optimizer state through weight_transfer.optimizer_state. Everything else a
run needs (batch order, augmentation, learning rate of each step, the metrics
and best-metric bookkeeping in metrics.jsonl) is framework-neutral already. A
switch that could not continue the run exactly is refused before anything
is loaded or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossattn.errors import CrossattnError
from crossattn.frameworks import adapter
from crossattn.training.config import TrainConfig
from weight_transfer import optimizer_state
from weight_transfer.checkpoints import read_checkpoint, to_numpy
from weight_transfer.transfer import transfer


def refuse_inexact(run: Path, config: TrainConfig, source: str, target: str) -> None:
    """Refuse, naming why, a switch that would change what the run computes from here on."""
    why = []
    if config.bn_stats == "native":
        why.append("it keeps each framework's own BatchNorm running-statistics rule (bn_stats: native), so its "
                   "running variances would follow another rule from here on; only runs under a shared rule "
                   "(bn_stats: torch or paddle) switch exactly")
    if config.amp != "none":
        why.append(f"it trains with amp {config.amp}: the frameworks' loss scalers and autocast op lists differ "
                   f"and have no exact translation")
    if why:
        raise CrossattnError(f"cannot continue {run} (trained with {source}) in {target}: " + "; ".join(why)
                             + f". Resume it with --framework {source}")


def refuse_dropout(run: Path, trainer: Any, source: str, target: str) -> None:
    layers = trainer.dropout_layers()
    if layers:
        raise CrossattnError(f"cannot continue {run} (trained with {source}) in {target}: the model has dropout "
                             f"({', '.join(layers[:3])}), whose masks come from each framework's own random "
                             f"generator, so the switched run would not be the same run. Resume it with "
                             f"--framework {source}")


def load_foreign(trainer: Any, path: Path, source: str, target: str, config: TrainConfig) -> tuple[int, int]:
    """Load a `source` checkpoint into the `target` trainer; returns (epoch, step)."""
    content = read_checkpoint(path).content  # plain arrays only: no pickled code runs
    if not isinstance(content, dict) or "model" not in content:
        raise CrossattnError(f"{path}: not a crossattn training checkpoint (no `model` entry)")
    where = str(path)
    weights = {k: to_numpy(v, k, where) for k, v in content["model"].items()}
    slots = adapter(target).slots(trainer.model)
    state, _ = transfer(weights, source, slots, target, context=f"continuing {path} in {target}")
    opt = optimizer_state.read(optimizer_state.numpy_tree(content), source, where)
    if opt is None:
        raise CrossattnError(f"{path}: the checkpoint holds no optimizer state; the run cannot continue exactly")
    wanted = optimizer_state.hyperparameters(config)
    if opt.hyper != wanted:
        changed = ", ".join(f"{k} {opt.hyper[k]!r} -> {wanted[k]!r}" for k in wanted if opt.hyper[k] != wanted[k])
        raise CrossattnError(f"{path}: the checkpoint's optimizer differs from the run's config ({changed})")
    trainer.load_translated(state, optimizer_state.translate(opt, slots, target, where))
    return int(content["epoch"]), int(content["step"])

