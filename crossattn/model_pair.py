"""A model pair: the two models every command checks, traces, converts, aligns or benchmarks.

Either the twins of a spec (both built from one YAML) or a user's own torch model
and paddle model, each given as MODULE:FACTORY, with a name map where their layer
names differ. Every command takes the same options (`pair_options`) and resolves
them the same way (`pair_from_cli`), so a port that works with `diff` works with
`check`, `convert` and `align` too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from crossattn.errors import CrossattnError, TransferError

FRAMEWORKS = ("torch", "paddle")
AUTO = "auto"
_EXPECTED_CLASS = {"torch": "a torch.nn.Module", "paddle": "a paddle.nn.Layer"}


@dataclasses.dataclass
class ModelPair:
    """Two models meant to compute the same function, and how their state names correspond."""

    name: str
    builders: Mapping[str, Callable[[], Any]]
    input_shape: tuple[int, ...] | None = None
    type_name: str = ""
    spec: Any = None  # crossattn.spec.Spec for a spec's twins, None for a user's pair
    #: torch layer name (or prefix, "" included) -> paddle layer name, longest prefix first
    name_map: dict[str, str] = dataclasses.field(default_factory=dict)
    #: where the name map came from, for errors about its entries (`--name-map FILE`)
    name_map_origin: str = "--name-map"
    #: what was assumed while resolving the pair (an automatic name map), shown to the user
    notes: list[str] = dataclasses.field(default_factory=list)
    #: how the user named the pair, for reports (`--torch-model a:b --paddle-model c:d`)
    origin: str = ""
    #: what building the models changed to make them compare as the frameworks compute (reported with results)
    conventions: list[str] = dataclasses.field(default_factory=list)
    #: each framework's starting state from a user's checkpoint (`start_weights`); None: a check draws its own
    weights: dict[str, dict] | None = dataclasses.field(default=None, repr=False)
    _slots: dict[str, dict] = dataclasses.field(default_factory=dict, repr=False)
    _cumulative_bn: list[str] = dataclasses.field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.type_name = self.type_name or self.name
        self.origin = self.origin or self.name

    @classmethod
    def from_spec(cls, spec: Any) -> ModelPair:
        from crossattn import registry

        def builder(framework: str) -> Callable[[], Any]:
            return lambda: registry.build(spec, framework)

        return cls(spec.name or spec.type, {fw: builder(fw) for fw in FRAMEWORKS}, spec.input_shape, spec.type,
                   spec, origin=f"spec {spec.name or spec.type}")

    @classmethod
    def from_factories(cls, torch_target: str, paddle_target: str, model_args: str | Mapping | None = None,
                       name_map: str | Mapping[str, str] | None = None,
                       input_shape: str | tuple[int, ...] | None = None) -> ModelPair:
        """A user's pair: `MODULE:FACTORY` for each framework, optional factory keyword arguments and name map.

        `model_args` is a YAML file (or a mapping): either one mapping of keyword
        arguments given to both factories, or `torch:` and `paddle:` mappings.
        `name_map` is a YAML file (or a mapping) of torch -> paddle layer names,
        or "auto" to have one proposed from the two models' structure.
        """
        kwargs = load_model_args(model_args)
        targets = {"torch": torch_target, "paddle": paddle_target}
        for framework, target in targets.items():
            resolve_factory(target, f"--{framework}-model")  # fail on a bad target before building anything

        def builder(framework: str) -> Callable[[], Any]:
            return lambda: call_factory(targets[framework], f"--{framework}-model", kwargs[framework])

        shape = parse_shape(input_shape, "--input-shape") if isinstance(input_shape, str) else input_shape
        name = f"{_short(torch_target)} / {_short(paddle_target)}"
        pair = cls(name, {fw: builder(fw) for fw in FRAMEWORKS}, shape, "user-model",
                   origin=f"--torch-model {torch_target} --paddle-model {paddle_target}")
        if isinstance(name_map, str) and name_map == AUTO:
            pair.propose_name_map()
        else:
            pair.name_map = load_name_map(name_map)
            if isinstance(name_map, (str, os.PathLike)):
                pair.name_map_origin = f"--name-map {name_map}"
        return pair

    # ----------------------------------------------------------------- models and slots

    def build(self, framework: str) -> Any:
        """A fresh model of `framework`, as its builder makes it (weights are set by the caller)."""
        from crossattn.frameworks import require

        if framework not in self.builders:
            raise CrossattnError(f"unknown framework {framework!r}; expected one of: {', '.join(FRAMEWORKS)}")
        require(framework)
        model = self.builders[framework]()
        _require_model(model, framework, self.origin)
        self._check_name_map(framework, model)
        if framework == "torch":
            self._materialise_lazy(model)
            self._held_as_paddle(model)
        else:
            self._paddle_defects(model)
        return model

    def _check_name_map(self, framework: str, model: Any) -> None:
        """Each name-map entry's `framework` side must name a layer of the model: an entry naming none renames
        nothing there, and the layers it was meant for then compare as missing (a FAIL with the wrong cause)."""
        if not self.name_map:
            return
        from crossattn.frameworks import adapter

        names = adapter(framework).layer_names(model)
        side = self.name_map if framework == "torch" else {v: k for k, v in self.name_map.items()}
        for name, other in side.items():
            if name in names:
                continue
            close = difflib.get_close_matches(name, sorted(names - {""}), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
            entry = f"{name}: {other}" if framework == "torch" else f"{other}: {name}"
            raise CrossattnError(f"{self.name_map_origin}: entry `{entry}`: the {framework} model ({self.origin}) "
                                 f"has no layer `{name}`{hint or '.'} Keys are torch layer names, values paddle layer "
                                 f"names (dotted, as named_modules / named_sublayers give them; \"\" for the whole "
                                 f"model)")

    def _materialise_lazy(self, model: Any) -> None:
        """torch's lazy modules (`nn.LazyLinear`, `nn.LazyConv2d`, ...) take their shapes from a first forward: one
        of zeros of the input shape, in eval mode without gradient, so no running statistic moves."""
        from torch_impl.adapter import materialise_lazy

        if materialise_lazy(model, self.input_shape) is None:
            raise CrossattnError(f"{self.origin}: the torch model has lazy modules (uninitialised parameters of "
                                 f"`nn.Lazy*` layers), whose shapes come from a first forward; give --input-shape "
                                 f"(or the spec's `input_shape`) so that one can run")

    def _paddle_defects(self, model: Any) -> None:
        """Layers whose paddle kernels are known to be wrong (`paddle_impl.layers.known_defects`), noted once."""
        from paddle_impl.layers import known_defects

        for note in known_defects(model):
            if note not in self.conventions:
                self.conventions.append(note)

    def _held_as_paddle(self, model: Any) -> None:
        """torch's norm epsilons as paddle holds them (`torch_impl.layers.epsilons_as_paddle_holds`), noted once."""
        from torch_impl.layers import epsilons_as_paddle_holds

        changed = epsilons_as_paddle_holds(model)
        if changed and not self.conventions:
            name, built, used = changed[0]
            self.conventions.append(
                f"torch's BatchNorm/InstanceNorm/LayerNorm epsilons are used as paddle holds them, in float32 "
                f"({len(changed)} layer(s), e.g. `{name or 'the model'}`: {built:g} -> {used:.9g}); paddle "
                f"cannot apply a value in between, and in float64 the difference shows where a variance is small")

    def build_lazy(self, framework: str) -> Any:
        """The framework's model with shapes and dtypes but no values (torch's meta device, paddle's LazyGuard).

        Building skips the framework's default initialisation, most of the time
        of building a large model; a factory that needs values while building,
        or a layer the lazy context cannot build (paddle 3.3.1's LSTM and GRU
        under LazyGuard), is built for real: a failure of that build is the one
        reported.
        """
        from crossattn.frameworks import adapter

        try:
            with adapter(framework).lazy():
                return self.build(framework)
        except Exception:  # noqa: BLE001 - any failure under the lazy context (a user's factory's too): build it
            return self.build(framework)

    def slots(self, framework: str) -> dict:
        """The framework model's slots (every state tensor with its layer kind), cached; read from a model built
        without storage, which is then dropped."""
        if framework not in self._slots:
            model = self.build_lazy(framework)
            self.remember_slots(framework, model)
            del model
            release_freed_memory()
        return self._slots[framework]

    def cumulative_batch_norms(self) -> list[str]:
        """The torch model's BatchNorm layers with momentum None (a cumulative average, by their counters)."""
        self.slots("torch")
        return list(self._cumulative_bn)

    def remember_slots(self, framework: str, model: Any) -> None:
        """Take the slots from a model built without storage elsewhere (the memory bound's meta build)."""
        if framework not in self._slots:
            from crossattn.frameworks import adapter

            self._slots[framework] = adapter(framework).slots(model)
            if framework == "torch":  # read while the model is here (convert names them; no second build)
                self._cumulative_bn = sorted(layer for layer, momentum in adapter(framework).bn_momenta(model).items()
                                             if momentum is None)

    # ----------------------------------------------------------------- names

    def layer_map(self, source: str, target: str) -> dict[str, str]:
        """The name map oriented source -> target (it is written torch -> paddle)."""
        if source == target:
            return {}
        if source == "torch":
            return dict(self.name_map)
        return {paddle: torch for torch, paddle in self.name_map.items()}

    def transfer(self, state: Mapping[str, Any], source_fw: str, target_fw: str, target_slots: Mapping | None = None,
                 complete: bool = True, context: str = "weight transfer") -> tuple[dict, Any]:
        """`state` (keyed as in `source_fw`) mapped onto the target's slots through the rules and the name map."""
        from weight_transfer import transfer

        target_slots = target_slots if target_slots is not None else self.slots(target_fw)
        if not self.name_map:
            return transfer(state, source_fw, target_slots, target_fw, complete=complete, context=context)
        as_source, own_key = renamed_slots(target_slots, self.layer_map(target_fw, source_fw), context)
        out, report = transfer(state, source_fw, as_source, target_fw, complete=complete, context=context)
        return {own_key[key]: value for key, value in out.items()}, report

    def propose_name_map(self) -> None:
        """Fill `name_map` from the models' structure (`--name-map auto`); what was assumed goes to `notes`."""
        from crossattn.name_mapping import propose_name_map

        proposal = propose_name_map(self.slots("torch"), self.slots("paddle"))
        self.name_map = dict(proposal.mapping)
        self.notes += [f"--name-map auto: {note}" for note in proposal.notes]


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so a model built only for its slots does not
    stay resident while a checkpoint is read."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def renamed_slots(slots: Mapping[str, Any], layer_map: Mapping[str, str],
                  context: str = "weight transfer") -> tuple[dict[str, Any], dict[str, str]]:
    """Slots re-keyed through a layer map, and each new key's original key; two slots may not meet."""
    from weight_transfer.slots import join
    from weight_transfer.transfer import map_layer_name

    renamed: dict[str, Any] = {}
    own_key: dict[str, str] = {}
    clashes = []
    for slot in slots.values():
        layer = map_layer_name(slot.layer, layer_map)
        new = dataclasses.replace(slot, layer=layer, key=join(layer, slot.name))
        if new.key in renamed:
            clashes.append(f"`{own_key[new.key]}` and `{slot.key}` both map to `{new.key}`")
            continue
        renamed[new.key] = new
        own_key[new.key] = slot.key
    if clashes:
        raise TransferError([f"name map clash: {c}" for c in clashes], context)
    return renamed, own_key


# --------------------------------------------------------------------------- user input


def _importable_cwd() -> None:
    """Users run from the folder holding their package; the installed script does not put it on the path."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve_factory(target: str, option: str) -> Callable[..., Any]:
    """Import MODULE:FACTORY (from the current folder too); errors name the option."""
    if not isinstance(target, str):
        raise CrossattnError(f"{option} expects MODULE:FACTORY (e.g. mypkg.models:build), got {target!r}")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CrossattnError(f"{option} expects MODULE:FACTORY (e.g. mypkg.models:build), got {target!r}")
    _importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CrossattnError(f"{option}: cannot import module {module_name!r} ({exc}); run from the folder that "
                             f"holds it or add that folder to PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 - importing the user's module runs the user's code
        raise CrossattnError(f"{option}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))

        close = difflib.get_close_matches(attr, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CrossattnError(f"{option}: module {module_name!r} has no callable {attr!r}{hint}")
    return factory


def call_factory(target: str, option: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    factory = resolve_factory(target, option)
    try:
        return factory(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        given = f" with {dict(kwargs)}" if kwargs else ""
        raise CrossattnError(f"{option} {target}: the factory raised {type(exc).__name__}{given}: {exc}") from None


def _require_model(model: Any, framework: str, origin: str) -> None:
    if framework == "torch":
        import torch

        ok = isinstance(model, torch.nn.Module)
    else:
        import paddle

        ok = isinstance(model, paddle.nn.Layer)
    if not ok:
        raise CrossattnError(f"--{framework}-model ({origin}): the factory returned {type(model).__name__}, "
                             f"expected {_EXPECTED_CLASS[framework]}")


def _read_yaml_mapping(path: str, option: str) -> Any:
    """A regular, small, shallow YAML file, read like a spec (a named pipe is never opened)."""
    from crossattn.errors import SpecError
    from crossattn.spec import read_yaml

    try:
        return read_yaml(path, f"pass a YAML file for {option}")
    except SpecError as exc:
        where = f" (line {exc.line})" if exc.line else ""
        raise CrossattnError(f"{option} {path}{where}: {exc.message}") from None


def load_model_args(source: str | Mapping | None) -> dict[str, dict[str, Any]]:
    """Keyword arguments for each framework's factory: one mapping for both, or `torch:`/`paddle:` mappings."""
    if source is None:
        return {fw: {} for fw in FRAMEWORKS}
    data = _read_yaml_mapping(source, "--model-args") if isinstance(source, (str, os.PathLike)) else source
    where = f"--model-args {source}" if isinstance(source, (str, os.PathLike)) else "model_args"
    if data is None:
        data = {}
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise CrossattnError(f"{where}: expected a mapping of keyword arguments (or `torch:` and `paddle:` "
                             f"mappings), got {type(data).__name__}")
    if data and set(data) <= set(FRAMEWORKS) and all(isinstance(v, Mapping) or v is None for v in data.values()):
        per = {fw: dict(data.get(fw) or {}) for fw in FRAMEWORKS}
        for fw, kwargs in per.items():
            bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
            if bad:
                raise CrossattnError(f"{where}, key `{fw}`: keyword argument names must be identifiers, got {bad}")
        return per
    bad = [k for k in data if not k.isidentifier()]
    if bad:
        raise CrossattnError(f"{where}: keyword argument names must be identifiers, got {bad}")
    return {fw: dict(data) for fw in FRAMEWORKS}


def load_name_map(source: str | Mapping[str, str] | None) -> dict[str, str]:
    """A YAML mapping (or a mapping) of torch layer names or prefixes to paddle ones; "" is the whole model."""
    if source is None:
        return {}
    data = _read_yaml_mapping(source, "--name-map") if isinstance(source, (str, os.PathLike)) else source
    where = f"--name-map {source}" if isinstance(source, (str, os.PathLike)) else "name_map"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise CrossattnError(f"{where}: expected a mapping of torch layer names to paddle layer names "
                             f"(e.g. `backbone: features`), got {type(data).__name__}")
    out: dict[str, str] = {}
    for key, value in data.items():
        key = "" if key is None else key
        value = "" if value is None else value
        if not isinstance(key, str) or not isinstance(value, str):
            raise CrossattnError(f"{where}: entry {key!r}: {value!r}: both sides must be layer names (strings)")
        for side in (key, value):
            if side.startswith(".") or side.endswith(".") or ".." in side:
                raise CrossattnError(f"{where}: entry {key!r}: {value!r}: {side!r} is not a layer name (dotted "
                                     f"path without leading, trailing or doubled dots)")
        out[key] = value
    inverse: dict[str, str] = {}
    for key, value in out.items():
        if value in inverse:
            raise CrossattnError(f"{where}: `{inverse[value]}` and `{key}` both map to `{value}`; a name map must "
                                 f"be one-to-one")
        inverse[value] = key
    return out


def parse_shape(text: str | None, option: str = "--input-shape") -> tuple[int, ...]:
    if not text:
        raise CrossattnError(f"{option} is required with your own models, e.g. {option} 2,3,32,32")
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        raise CrossattnError(f"{option} expects comma-separated positive integers, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise CrossattnError(f"{option} expects comma-separated positive integers, got {text!r}")
    if len(shape) > 6:
        raise CrossattnError(f"{option}: {len(shape)} dimensions; vision models take at most 6 (batch, channels "
                             f"and up to 3 spatial, plus one spare)")
    values = 1
    for v in shape:
        values *= v
    if values > 2**31 - 1:
        raise CrossattnError(f"{option} {text}: {values} values is more than one tensor may hold here")
    return shape


def _short(target: str) -> str:
    return target.rpartition(":")[2] or target


# --------------------------------------------------------------------------- CLI


def pair_options(command: Callable) -> Callable:
    """The options that name a user's own pair; every command that takes a spec takes these too."""
    import click

    options = [
        click.option("--torch-model", metavar="MODULE:FACTORY",
                     help="Your torch model: a callable returning a torch.nn.Module (imported from the current "
                          "folder too)."),
        click.option("--paddle-model", metavar="MODULE:FACTORY",
                     help="Your paddle model: a callable returning a paddle.nn.Layer."),
        click.option("--model-args", type=click.Path(dir_okay=False), default=None,
                     help="YAML keyword arguments for the factories: one mapping for both, or `torch:` and "
                          "`paddle:` mappings."),
        click.option("--name-map", default=None, metavar="FILE|auto",
                     help="YAML map of torch layer names (or prefixes; '' is the whole model) to paddle ones, or "
                          "'auto' to have it proposed from the models' structure (see `crossattn map`)."),
        click.option("--input-shape", default=None, metavar="N,C,H,W",
                     help="Input shape for your own models (a spec states its own), e.g. 2,3,32,32."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pair_from_cli(spec_arg: str | None, torch_model: str | None = None, paddle_model: str | None = None,
                  model_args: str | None = None, name_map: str | None = None, input_shape: str | None = None,
                  command: str = "this command", need_input: bool = True) -> ModelPair:
    """The pair a command was given: a spec (name or path), or --torch-model and --paddle-model."""
    user = torch_model or paddle_model or model_args
    if spec_arg and user:
        raise CrossattnError(f"{command} takes either a spec or --torch-model/--paddle-model (your own pair), "
                             f"not both")
    if spec_arg:
        from crossattn.spec import load_spec, resolve_spec

        spec = load_spec(resolve_spec(spec_arg))
        pair = ModelPair.from_spec(spec)
        if input_shape:
            pair.input_shape = parse_shape(input_shape)
        if name_map:
            raise CrossattnError("--name-map applies to your own pair; a spec's twins share their names")
        if need_input and pair.input_shape is None:
            raise CrossattnError(f"spec {spec.path}: `input_shape` is required for {command}; add it to the spec "
                                 f"or pass --input-shape")
        return pair
    if not torch_model or not paddle_model:
        missing = "--paddle-model" if torch_model else "--torch-model"
        if not user:
            raise CrossattnError(f"{command} needs a spec (a shipped name or a path; see `crossattn specs`) or "
                                 f"your own pair: --torch-model MODULE:FACTORY --paddle-model MODULE:FACTORY")
        raise CrossattnError(f"{command}: your own pair needs both --torch-model and --paddle-model ({missing} "
                             f"is missing)")
    for framework, target in (("torch", torch_model), ("paddle", paddle_model)):
        resolve_factory(target, f"--{framework}-model")
    if need_input and not input_shape:
        parse_shape(None)
    return ModelPair.from_factories(torch_model, paddle_model, model_args, name_map, input_shape)
