"""Optimizer state between the frameworks: read, translated by definition, written; beside the parameter rules.

The state of a training checkpoint (a crossattn run's or one written by `crossattn
convert`) is read into a neutral record: the optimizer's hyperparameters, its step
count, and per parameter its moments in the source framework's naming and layout.
`translate` moves the moments through the same transfer rules as the parameters
(renamed, a Linear weight's moments transposed); `torch_state_dict` and
`paddle_state_dict` write the record in each framework's own form.

What each framework holds, and how the definitions meet (checked by the switch
tests: k steps + k steps in the other framework equal 2k steps in one):

- Adam/AdamW. torch: per parameter `exp_avg` m, `exp_avg_sq` v and `step` t;
  paddle: `moment1` m, `moment2` v, `beta1_pow_acc` = beta1^(t+1) and
  `beta2_pow_acc` = beta2^(t+1) (the powers the *next* step uses; paddle starts
  them at beta and multiplies after each step). m and v have the same definition
  in both (paddle folds its bias corrections into the step size and epsilon,
  torch into m and v: the same update), so they carry over; t becomes the
  powers and back, and a checkpoint whose powers contradict its step is refused.
- SGD with momentum. torch's `momentum_buffer` b = mu b + (g + wd p); paddle's
  `velocity` v = mu v + (g + wd p) with its L2 decay: the same quantity (both
  without the learning rate; torch starts b at g, paddle v at 0, equal after a
  step). Plain SGD has no state.

Anything else (AMSGrad maxima, master weights, a learning-rate scheduler's own
state, a moment of a parameter the model lacks) is refused, never dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.errors import CrossattnError
from weight_transfer.slots import Slot
from weight_transfer.transfer import transfer

#: the neutral names of each optimizer family's moments and each framework's own names for them
MOMENTS = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}
PADDLE_MOMENTS = {"exp_avg": "moment1", "exp_avg_sq": "moment2", "momentum_buffer": "velocity"}
PADDLE_POWERS = ("beta1_pow_acc", "beta2_pow_acc")
#: the training-config keys that define the optimizer (recorded in every checkpoint crossattn writes)
HYPER_KEYS = ("optimizer", "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "momentum", "nesterov")
#: checkpoint entries written beside the framework's own optimizer state
NAMES_KEY = "parameter_names"
HYPER_KEY = "optimizer_config"
#: the learning rate the checkpoint's last step took (a schedule moves it away from `optimizer_config.lr`)
LR_KEY = "lr"


class OptimizerStateError(CrossattnError):
    """Optimizer state that cannot be carried over exactly."""


@dataclasses.dataclass
class OptimizerState:
    """One optimizer's state, framework-neutral in meaning, in `framework`'s naming and layout."""

    hyper: dict[str, Any]
    step: int
    framework: str
    #: neutral moment name -> {parameter key: array}; empty before the first step
    moments: dict[str, dict[str, np.ndarray]]
    #: the learning rate the last step took (a schedule's value, not the config's peak); None where not recorded
    lr: float | None = None

    @property
    def family(self) -> str:
        return family(self.hyper["optimizer"])


def family(optimizer: str) -> str:
    """adam and adamw keep the same state; sgd its momentum buffer (none without momentum)."""
    return "sgd" if optimizer == "sgd" else "adam"


def hyperparameters(config: Any) -> dict[str, Any]:
    """The optimizer-defining fields of a training config, as recorded in checkpoints."""
    return {key: getattr(config, key) for key in HYPER_KEYS}


def _array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


# --------------------------------------------------------------------------- reading


def read(content: Mapping[str, Any], framework: str, where: str = "checkpoint",
         parameter_names: Any = None, settings_recorded: bool = False, live: bool = False) -> OptimizerState | None:
    """The optimizer state of a training checkpoint's content; None when it holds none.

    `parameter_names` stands in for the checkpoint's own record (torch: the
    trainable parameters in optimizer order; paddle: structured name -> variable name).
    `settings_recorded`: a file from elsewhere, whose torch param_groups must agree with `optimizer_config` (align
    reads live optimizers, where a differing setting is a drift to show, not a file to refuse).
    `live`: a running optimizer's state (align's), whose paddle beta powers are what its own betas made: they are
    not held to `optimizer_config`'s, and a differing beta shows in the moments it drives.
    """
    if "optimizer" not in content:
        return None
    hyper = content.get(HYPER_KEY)
    names = content.get(NAMES_KEY, parameter_names)
    if not isinstance(hyper, Mapping) or names is None:
        missing = HYPER_KEY if not isinstance(hyper, Mapping) else NAMES_KEY
        raise OptimizerStateError(f"{where}: the optimizer state has no `{missing}` record (a checkpoint not "
                                  f"written by crossattn, or by an older version), so its parameters or "
                                  f"hyperparameters cannot be identified for the other framework")
    unknown = sorted(set(HYPER_KEYS) - set(hyper))
    if unknown:
        raise OptimizerStateError(f"{where}: `{HYPER_KEY}` lacks {', '.join(unknown)}")
    hyper = _valid_hyper({k: hyper[k] for k in HYPER_KEYS}, where)
    step = content.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise OptimizerStateError(f"{where}: `step` = {step!r}; expected a whole number of steps, 0 or more")
    step = int(step)
    reader = _read_torch if framework == "torch" else _read_paddle
    if settings_recorded and framework == "torch" and isinstance(content["optimizer"], Mapping):
        groups = content["optimizer"].get("param_groups", [])
        for group in groups:
            _group_agrees(group, hyper, where)
        _groups_agree(groups, where)
    moments = reader(content["optimizer"], names, hyper, step, where, live)
    for moment, values in moments.items():
        bad = sorted(k for k, v in values.items() if np.issubdtype(v.dtype, np.number) and not np.isfinite(v).all())
        if bad:
            raise OptimizerStateError(f"{where}: the optimizer's `{moment}` of {', '.join(bad[:3])} holds NaN or "
                                      f"infinity; a run in that state has diverged, and carrying it over would "
                                      f"only move the damage (a .safetensors or .npz destination takes the "
                                      f"weights alone)")
    return OptimizerState(hyper, step, framework, moments, _current_lr(content, framework, where))


def _current_lr(content: Mapping[str, Any], framework: str, where: str) -> float | None:
    """The rate of the last step: the file's `lr` entry (crossattn's loops write it), else torch's first group's."""
    value = content.get(LR_KEY)
    if value is None and framework == "torch" and isinstance(content["optimizer"], Mapping):
        groups = content["optimizer"].get("param_groups") or [{}]
        value = groups[0].get("lr") if isinstance(groups[0], Mapping) else None
    if value is None:
        return None
    value = _array(value).reshape(-1)[0] if not isinstance(value, (int, float)) else value
    if isinstance(value, bool) or not np.isreal(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise OptimizerStateError(f"{where}: the learning rate recorded for the last step is {value!r}; expected a "
                                  f"finite number, 0 or more")
    return float(value)


def _valid_hyper(hyper: dict[str, Any], where: str) -> dict[str, Any]:
    """The optimizer settings with the types and ranges an optimizer takes; anything else is named."""
    if hyper["optimizer"] not in ("sgd", "adam", "adamw"):
        raise OptimizerStateError(f"{where}: `{HYPER_KEY}.optimizer` = {hyper['optimizer']!r}; expected one of "
                                  f"sgd, adam, adamw")
    if not isinstance(hyper["nesterov"], (bool, np.bool_)):
        raise OptimizerStateError(f"{where}: `{HYPER_KEY}.nesterov` = {hyper['nesterov']!r}; expected true or false")
    for key in ("lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "momentum"):
        value = hyper[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                or value < 0:
            raise OptimizerStateError(f"{where}: `{HYPER_KEY}.{key}` = {value!r}; expected a finite number, 0 or "
                                      f"more")
        hyper[key] = float(value)
    hyper["nesterov"] = bool(hyper["nesterov"])
    return hyper


def _read_torch(state_dict: Mapping, names: Sequence[str], hyper: dict, step: int,
                where: str, live: bool = False) -> dict[str, dict[str, np.ndarray]]:
    expected = MOMENTS[family(hyper["optimizer"])] if hyper["optimizer"] != "sgd" or hyper["momentum"] > 0 else ()
    indices = [i for group in state_dict.get("param_groups", []) for i in group["params"]]
    if len(indices) != len(names):
        raise OptimizerStateError(f"{where}: the optimizer holds {len(indices)} parameters, the model "
                                  f"{len(names)} trainable ones")
    key_of = dict(zip(indices, names))
    moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in expected}
    for index, entry in state_dict.get("state", {}).items():
        extra = sorted(set(entry) - set(expected) - {"step"})
        if extra:
            raise OptimizerStateError(f"{where}: parameter {key_of[index]} holds optimizer state "
                                      f"{', '.join(extra)}, which crossattn does not translate (AMSGrad and "
                                      f"other variants are not carried over)")
        if "step" in entry and int(round(float(_array(entry["step"])))) != step:
            raise OptimizerStateError(f"{where}: parameter {key_of[index]} took {float(_array(entry['step'])):g} "
                                      f"optimizer steps, the checkpoint records {step}")
        for moment in expected:
            if entry.get(moment) is not None:
                moments[moment][key_of[index]] = _array(entry[moment])
    return moments


def _group_agrees(group: Mapping, hyper: dict, where: str) -> None:
    """torch's own record of a parameter group's settings must be `optimizer_config`'s, the one translated (torch's
    load_state_dict would apply the group's). The learning rate is left out: a schedule moves it (`_groups_agree`
    holds the groups to one rate). A setting paddle's optimizer has no counterpart for is refused by name."""
    adamw = hyper["optimizer"] == "adamw"
    if hyper["optimizer"] == "sgd":
        pairs = [("momentum", group.get("momentum"), hyper["momentum"]), ("nesterov", group.get("nesterov"),
                                                                        hyper["nesterov"])]
        unmatched = [("dampening", group.get("dampening"), 0.0,
                      "paddle's Momentum has no dampening: its velocity adds the whole gradient")]
    else:
        betas = group.get("betas") or (None, None)
        pairs = [("betas[0]", betas[0], hyper["adam_beta1"]), ("betas[1]", betas[1], hyper["adam_beta2"]),
                 ("eps", group.get("eps"), hyper["adam_epsilon"])]
        if hyper["weight_decay"] > 0:  # without decay, Adam and AdamW are the same update
            pairs.append(("decoupled_weight_decay", group.get("decoupled_weight_decay"), adamw))
        unmatched = [("amsgrad", group.get("amsgrad"), False, "paddle's Adam keeps no AMSGrad maxima")]
    pairs.append(("weight_decay", group.get("weight_decay"), hyper["weight_decay"]))
    unmatched.append(("maximize", group.get("maximize"), False, "paddle's optimizers only minimise"))
    for name, held, wanted, why in unmatched:
        if held is not None and not _same_setting(held, wanted):
            raise OptimizerStateError(f"{where}: the optimizer's param_groups hold {name} = {held!r}, which "
                                      f"crossattn cannot carry over ({why}); its state is not translated (a "
                                      f".safetensors or .npz destination takes the weights alone)")
    for name, held, wanted in pairs:
        if held is None or _same_setting(held, wanted):
            continue
        raise OptimizerStateError(f"{where}: the optimizer's param_groups hold {name} = {held!r} and "
                                  f"`{HYPER_KEY}` says {wanted!r}; which one the run used cannot be told, so "
                                  f"its state is not carried over")


def _same_setting(held: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool):
        return isinstance(held, (bool, np.bool_, int)) and bool(held) == wanted
    return not isinstance(held, bool) and isinstance(held, (int, float, np.number)) and \
        math.isclose(float(held), wanted, rel_tol=1e-6, abs_tol=1e-12)


def _groups_agree(groups: Sequence[Mapping], where: str) -> None:
    """One learning rate for every group: the translated state has one (`optimizer_config.lr`, moved by one
    schedule), and paddle's optimizer applies one to all its parameters."""
    rates = [group.get("lr") for group in groups]
    numbers = [float(r) for r in rates if isinstance(r, (int, float, np.number)) and not isinstance(r, bool)]
    if len(numbers) > 1 and not all(math.isclose(r, numbers[0], rel_tol=1e-9, abs_tol=0.0) for r in numbers):
        shown = ", ".join(f"{r:g}" for r in numbers[:5])
        raise OptimizerStateError(f"{where}: the optimizer's {len(numbers)} param_groups train at different "
                                  f"learning rates ({shown}); crossattn translates one optimizer with one rate, so "
                                  f"its state is not carried over (a .safetensors or .npz destination takes the "
                                  f"weights alone)")


def _read_paddle(state_dict: Mapping, names: Mapping[str, str], hyper: dict, step: int,
                 where: str, live: bool = False) -> dict[str, dict[str, np.ndarray]]:
    fam = family(hyper["optimizer"])
    expected = MOMENTS[fam] if hyper["optimizer"] != "sgd" or hyper["momentum"] > 0 else ()
    by_var = {var: key for key, var in names.items()}
    pattern = re.compile(r"^(?P<var>.+?)_(?P<acc>moment1|moment2|moment2_max|velocity|beta1_pow_acc|beta2_pow_acc|"
                         r"master_weight)_\d+$")
    wanted = {PADDLE_MOMENTS[m]: m for m in expected}
    moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in expected}
    unknown = []
    for entry, value in state_dict.items():
        match = pattern.match(entry)
        var, acc = (match.group("var"), match.group("acc")) if match else (None, None)
        if var not in by_var or (acc not in wanted and not (fam == "adam" and acc in PADDLE_POWERS)):
            unknown.append(entry)
            continue
        value = _array(value)
        if acc in wanted:
            moments[wanted[acc]][by_var[var]] = value
            continue
        if live:
            continue
        beta = hyper["adam_beta1"] if acc == "beta1_pow_acc" else hyper["adam_beta2"]
        have = float(value.reshape(-1)[0])
        want = beta ** (step + 1)
        # paddle multiplies the power out step by step in the accumulator's dtype: float32 drifts past 1e-5 of
        # beta^(step+1) by step ~380 (beta 0.9) and stops at a few subnormals; that product is what it holds
        accumulated = float(_power(beta, step + 1, value.dtype if value.dtype.kind == "f" else np.dtype("float32"))[0])
        if not (math.isclose(have, want, rel_tol=1e-5) or math.isclose(have, accumulated, rel_tol=1e-5)):
            raise OptimizerStateError(f"{where}: `{entry}` = {have:.9g} is not beta^(step+1) = {want:.9g} (nor "
                                      f"{accumulated:.9g}, that power multiplied out in {value.dtype}) for the "
                                      f"recorded {step} steps and beta {beta:g} of `{HYPER_KEY}`: the step count, "
                                      f"or the beta the optimizer ran with, is not what is recorded, so the state "
                                      f"cannot be carried over")
    if unknown:
        shown = ", ".join(f"`{k}`" for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise OptimizerStateError(f"{where}: optimizer entries {shown} belong to no parameter of the model or "
                                  f"are state crossattn does not translate")
    return moments


# --------------------------------------------------------------------------- translating


def translate(state: OptimizerState, target_slots: Mapping[str, Slot], target_framework: str,
              where: str = "optimizer state", pair: Any = None) -> OptimizerState:
    """The same state for the target twin: each moment renamed and laid out as its parameter is.

    `pair` (a crossattn.model_pair.ModelPair) adds its name map for a user's own pair.
    """
    if state.framework == target_framework:
        return state
    trainable = {k: s for k, s in target_slots.items() if s.trainable}
    moments = {}
    for moment, values in state.moments.items():
        context = f"{where} ({moment})"
        if pair is not None:
            moved, _ = pair.transfer(values, state.framework, target_framework, target_slots=trainable,
                                     complete=False, context=context)
        else:
            moved, _ = transfer(values, state.framework, trainable, target_framework, complete=False,
                                context=context)
        # a parameter no step reached (an unused head) has no state in either framework, and takes none; every
        # record the source does hold must land on a parameter
        if len(moved) != len(values):
            raise OptimizerStateError(f"{where}: {len(values) - len(moved)} `{moment}` tensor(s) have no "
                                      f"{target_framework} parameter to go to")
        moments[moment] = moved
    return OptimizerState(dict(state.hyper), state.step, target_framework, moments, state.lr)


# --------------------------------------------------------------------------- writing


def torch_state_dict(state: OptimizerState, names: Sequence[str], param_groups: list[dict]) -> dict:
    """torch's `optimizer.state_dict()` form; `param_groups` from the optimizer that will load it."""
    index = {key: i for i, key in enumerate(names)}
    entries: dict[int, dict[str, Any]] = {}
    for moment, values in state.moments.items():
        for key, value in values.items():
            entries.setdefault(index[key], {})[moment] = value
    if state.family == "adam":
        for entry in entries.values():
            entry["step"] = np.array(float(state.step), dtype=np.float32)
    return {"state": dict(sorted(entries.items())), "param_groups": param_groups}


def paddle_state_dict(state: OptimizerState, names: Mapping[str, str]) -> dict:
    """paddle's `optimizer.state_dict()` form, keyed by the variable names the target optimizer will create."""
    out: dict[str, np.ndarray] = {}
    dtypes = {key: str(value.dtype) for values in state.moments.values() for key, value in values.items()}
    for moment, values in state.moments.items():
        for key, value in values.items():
            out[f"{names[key]}_{PADDLE_MOMENTS[moment]}_0"] = value
    if state.family == "adam" and state.step > 0:
        powers: dict[tuple[str, str], np.ndarray] = {}
        for key in state.moments["exp_avg"]:
            for acc, beta in zip(PADDLE_POWERS, (state.hyper["adam_beta1"], state.hyper["adam_beta2"])):
                if (acc, dtypes[key]) not in powers:
                    powers[acc, dtypes[key]] = _power(beta, state.step + 1, np.dtype(dtypes[key]))
                out[f"{names[key]}_{acc}_0"] = powers[acc, dtypes[key]].copy()
    return out


def _power(beta: float, exponent: int, dtype: np.dtype) -> np.ndarray:
    """beta^exponent multiplied out step by step in `dtype`, as paddle accumulates it."""
    return np.array([_power_value(float(beta), int(exponent), np.dtype(dtype).str)], dtype=dtype)


@functools.lru_cache(maxsize=64)
def _power_value(beta: float, exponent: int, dtype_str: str) -> Any:
    """One power per (beta, exponent, dtype): every parameter of a model holds the same one."""
    dtype = np.dtype(dtype_str)
    factor = dtype.type(beta)
    value = factor
    for _ in range(exponent - 1):
        value = dtype.type(value * factor)
    return value


# --------------------------------------------------------------------------- converting checkpoint files


def training_entries(content: Any, source: str, target: str, pair: Any, where: str,
                     notes: list[str]) -> dict[str, Any]:
    """The entries beside the weights of a converted training checkpoint (optimizer state translated,
    epoch and step kept); {} when the source holds no optimizer state. `pair`: a ModelPair."""
    if not isinstance(content, Mapping) or "optimizer" not in content:
        return {}
    state = read(numpy_tree(content), source, where, settings_recorded=True)
    state = translate(state, pair.slots(target), target, where, pair=pair)
    module = importlib.import_module(f"{target}_impl.train")
    optimizer, names = module.native_optimizer_state(pair.build, state)
    notes.append(f"optimizer state ({state.hyper['optimizer']}, {state.step} steps) translated to {target}")
    if state.lr is None and target == "torch" and state.step > 0:
        notes.append(f"the source records no learning rate for its last step, so torch's param_groups hold "
                     f"`optimizer_config.lr` = {state.hyper['lr']:g}, the schedule's peak: crossattn's loop sets "
                     f"each step's rate itself; a scheduler of your own should be re-created at step {state.step}")
    entries = {"optimizer": optimizer, "epoch": int(content.get("epoch", 0)), "step": state.step,
               "framework": target, NAMES_KEY: names, HYPER_KEY: dict(state.hyper)}
    if state.lr is not None:
        entries[LR_KEY] = state.lr
    return entries


def write_training_checkpoint(path: Path, fmt: str, tensors: Mapping[str, np.ndarray],
                              entries: Mapping[str, Any]) -> None:
    """A training checkpoint in the framework's own format: {"model": weights, **entries}."""
    if fmt == "torch":
        from crossattn.frameworks import require

        torch = require("torch")
        payload = _map_arrays({"model": dict(tensors), **entries}, lambda a: torch.from_numpy(np.array(a)))
        torch.save(payload, path)
        return
    with open(path, "wb") as fh:  # the pickle paddle.save writes for nested dicts of arrays
        pickle.Pickler(fh, protocol=4).dump(_map_arrays({"model": dict(tensors), **entries}, np.ascontiguousarray))


def _map_arrays(value: Any, fn: Callable[[np.ndarray], Any]) -> Any:
    if isinstance(value, np.ndarray):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_arrays(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_arrays(v, fn) for v in value]
    return value


def numpy_tree(value: Any) -> Any:
    """Tensors anywhere in a checkpoint's content as numpy arrays."""
    if isinstance(value, Mapping):
        return {k: numpy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(numpy_tree(v) for v in value)
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return _array(value)
    return value
