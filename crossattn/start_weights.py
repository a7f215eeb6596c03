"""A check that starts from a user's checkpoint instead of drawn weights.

Drawn weights keep every activation near its typical range; a trained
network's (small running variances, large scales) reach the clipped and
saturated regions where a ported activation can differ (ReLU for ReLU6 after
MobileNetV2's last BatchNorm passes on drawn weights, fails on trained ones).
The checkpoint is read as `convert` reads it (no pickled code unless trusted),
its weights checked against the model's slots, and transferred to the other
framework, so each direction starts from the same values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crossattn.errors import CrossattnError
from crossattn.model_pair import ModelPair


def load_start_weights(pair: ModelPair, path: str | Path, trust_pickle: bool = False) -> list[str]:
    """Set `pair.weights` (each framework's state, from the checkpoint at `path`); returns notes to show."""
    from weight_transfer.checkpoints import locate_weights, read_checkpoint
    from weight_transfer.convert import _refuse_other_naming, _source_frameworks, other, validated
    from weight_transfer.values import _listed, non_finite

    raw = read_checkpoint(path, trust_pickle)
    options = _source_frameworks(raw.format, raw, None)
    located = locate_weights(raw, pair.slots, options)
    if not located.exact and len(options) == 1:
        _refuse_other_naming(raw, pair, options[0], None, None, None)
    bad = non_finite(located.weights)
    if bad:
        raise CrossattnError(f"--weights {path}: {len(bad)} tensor(s) hold non-finite values ({_listed(bad)}); "
                             f"a check needs finite weights")
    source = located.framework
    notes: list[str] = []
    context = f"--weights {path} ({located.describe()})"
    own = validated(located.weights, pair.slots(source), source, context, notes)
    target = other(source)
    converted, _ = pair.transfer(own, source, target, context=context)
    pair.weights = {source: own, target: converted}
    notes.append(f"started from --weights {path} ({source} naming, {located.describe()}, {len(own)} tensors) "
                 f"instead of drawn weights; the inputs are still drawn from --seed")
    return notes


def start_state(pair: ModelPair, framework: str, slots: dict) -> dict[str, np.ndarray]:
    """The checkpoint's state for `framework`, in the dtypes of `slots` (the check's)."""
    state = pair.weights[framework]
    return {key: np.asarray(state[key], dtype=slot.dtype, order="C") for key, slot in slots.items()}
