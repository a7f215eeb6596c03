"""Loading a user's own model pair and name map for `crossattn diff`."""

from __future__ import annotations

import importlib

import numpy as np

from crossattn.errors import CrossattnError
from crossattn.frameworks import adapter


def load_factory(target: str, option: str):
    """Import MODULE:FACTORY and call it; errors name the option."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CrossattnError(f"{option} expects MODULE:FACTORY (e.g. mypkg.models:build), got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CrossattnError(f"{option}: cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CrossattnError(f"{option}: {module_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise CrossattnError(f"{option} {target}: the factory raised {type(exc).__name__}: {exc}") from None
    return model


def load_name_map(path: str | None) -> dict[str, str]:
    """A YAML mapping of torch layer names to paddle layer names."""
    if path is None:
        return {}
    from crossattn.errors import SpecError
    from crossattn.spec import read_yaml

    try:  # a regular, small, shallow YAML file: a named pipe is never opened
        data = read_yaml(path, "pass a YAML file mapping torch layer names to paddle layer names")
    except SpecError as exc:
        where = f" (line {exc.line})" if exc.line else ""
        raise CrossattnError(f"--name-map {path}{where}: {exc.message}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise CrossattnError(f"--name-map {path}: expected a mapping of torch layer names to paddle layer names")
    return data


def parse_shape(text: str | None) -> tuple[int, ...]:
    if not text:
        raise CrossattnError("--input-shape is required with your own models, e.g. --input-shape 2,3,32,32")
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CrossattnError(f"--input-shape expects comma-separated positive integers, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise CrossattnError(f"--input-shape expects comma-separated positive integers, got {text!r}")
    return shape


def diff_user_models(torch_target, paddle_target, name_map_path, input_shape, direction, mode, single_step, tol,
                     seed, dtype, do_transfer):
    from crossattn.diff import diff_models, transfer_by_name_map

    if not torch_target or not paddle_target:
        raise CrossattnError("diff needs a SPEC, or both --torch-model and --paddle-model")
    shape = parse_shape(input_shape)
    name_map = load_name_map(name_map_path)
    models = {"torch": load_factory(torch_target, "--torch-model"),
              "paddle": load_factory(paddle_target, "--paddle-model")}
    expected = {"torch": "a torch.nn.Module", "paddle": "a paddle.nn.Layer"}
    for framework, model in models.items():
        try:
            adapter(framework).to_dtype(model, dtype)
        except (AttributeError, TypeError):
            raise CrossattnError(f"--{framework}-model: the factory returned {type(model).__name__}, expected "
                                 f"{expected[framework]}") from None
    ref_fw, got_fw = direction.split("->")
    # the map is written torch -> paddle; orient it reference -> candidate
    oriented = name_map if ref_fw == "torch" else {v: k for k, v in name_map.items()}
    if do_transfer:
        transfer_by_name_map(ref_fw, models[ref_fw], got_fw, models[got_fw], oriented)
    x = np.random.default_rng([seed, 1]).standard_normal(shape).astype(dtype)
    try:
        return diff_models((ref_fw, models[ref_fw]), (got_fw, models[got_fw]), x, oriented, mode, single_step, tol,
                           seed, title=f"{torch_target} vs {paddle_target}")
    except CrossattnError:
        raise
    except (RuntimeError, ValueError) as exc:  # a shape the models cannot take, as the frameworks word it
        raise CrossattnError(f"--input-shape {input_shape}: the models could not run on it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
