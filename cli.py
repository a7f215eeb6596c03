"""The `crossattn` command line: parses, calls library functions, prints.

Heavy imports (numpy, torch, paddle) happen inside commands, so `--help` is instant.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

import click

from crossattn import __version__
from crossattn.errors import CrossattnError
from crossattn.model_pair import pair_from_cli, pair_options, parse_shape
from crossattn.cli_problems import problems_to_json


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crossattn")
def cli() -> None:
    """PaddlePaddle <-> PyTorch twins of vision attention blocks.

    One YAML spec builds both twins; `check` proves them equivalent, forward
    and backward, tensor by tensor.
    """


def _finite(param: click.Parameter, value: float | None) -> float | None:
    """An infinite tolerance would pass everything: refuse it."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", param=param)
    return value


def _direction(value: str) -> str:
    """`torch2paddle` is the shell-safe spelling (an unquoted `->` is a redirect); the engine says `torch->paddle`."""
    return value.replace("2", "->") if "2" in value else value


@cli.command("specs")
def specs_command() -> None:
    """List the registered spec types and the shipped specs."""
    from crossattn import registry
    from crossattn.spec import shipped_spec_paths

    click.echo("registered types:")
    for name, entry in registry.entries().items():
        click.echo(f"  {name:<22} {entry.kind:<6} {entry.summary}")
    click.echo("shipped specs (pass the name or a path to `check`):")
    for path in shipped_spec_paths():
        click.echo(f"  {path.stem:<40} {path.parent.name}/{path.name}")


@cli.command("validate")
@click.argument("specs", nargs=-1, required=True)
def validate_command(specs: tuple[str, ...]) -> None:
    """Validate spec files without importing any framework; every problem of every file is reported.

    Errors exit 2. A warning names what a later command would refuse (a spec
    without input_shape cannot be checked, traced or verified).
    """
    from crossattn.spec import validate_file

    failed = 0
    for arg in specs:
        spec, errors, warnings = validate_file(arg)
        for error in errors:
            click.echo(f"error: {error}", err=True)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        if errors:
            failed += 1
        else:
            click.echo(f"ok  {spec.name} ({spec.type})")
    if failed:
        click.echo(f"{failed} of {len(specs)} file(s) failed validation", err=True)
        sys.exit(2)


@cli.command("check")
@click.argument("specs", nargs=-1)
@click.option("--all", "all_specs", is_flag=True, help="Check every shipped spec.")
@click.option("--direction", type=click.Choice(["both", "torch2paddle", "paddle2torch", "torch->paddle", "paddle->torch"]),
              default="both", show_default=True, callback=lambda c, p, v: _direction(v),
              help="Which framework's weights are transferred to the other.")
@click.option("--mode", type=click.Choice(["both", "train", "eval"]), default="both", show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="float64 separates divergence from rounding; float32 shows what a user's run sees.")
@click.option("--atol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v),
              help="Absolute tolerance (default: per dtype, see docs).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v),
              help="Norm-relative tolerance (default: per dtype).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of weights and inputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every comparison to this JSON file.")
@click.option("--full", is_flag=True, help="Print every tensor, not only the worst per case.")
@click.option("--layers", is_flag=True, help="Also trace every layer and mark the first that diverges.")
@click.option("--single-step", is_flag=True, help="With --layers: feed each layer the reference's input.")
@click.option("--probes/--no-probes", default=True, show_default=True,
              help="Also feed a large input, all positive in even samples and all negative in odd ones (eval "
                   "mode, first direction), which reaches clipped and saturated regions a standard-normal input "
                   "never does (a batch of one: the two signs as two probes); for your own pair also a "
                   "standard-normal input one pixel larger per spatial axis, where size-dependent differences "
                   "(ceil_mode, an adaptive pool written as a fixed one) show; skipped, with a note, where a "
                   "model takes one size only.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes checking specs in parallel (0: one per core).")
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), default=None,
              help="Start from this checkpoint (.pt, .pdparams, .safetensors, .npz; either framework's naming) "
                   "instead of drawn weights: trained weights reach saturated activations drawn ones may not. "
                   "One spec or your own pair.")
@click.option("--trust-pickle", is_flag=True,
              help="With --weights: allow pickled objects beyond plain tensors (runs code from the file).")
@pair_options
@problems_to_json
def check_command(specs: tuple[str, ...], all_specs: bool, direction: str, mode: str, dtype: str,
                  atol: float | None, rtol: float | None, seed: int, json_path: str | None, full: bool,
                  layers: bool, single_step: bool, probes: bool, workers: int, weights_path: str | None,
                  trust_pickle: bool, torch_model: str | None, paddle_model: str | None, model_args: str | None,
                  name_map: str | None, input_shape: str | None) -> None:
    """Prove the torch and paddle twins of SPECS (or your own pair) equivalent, forward and backward.

    Each spec is built in both frameworks; weights are initialised in one and
    transferred to the other; the same input goes through both in train and
    eval mode. Compared: output, input gradient, every parameter gradient and
    the running statistics of both sides; a large probe (all-positive and
    all-negative samples) follows. In float32 each tensor is also judged on both
    models' float64 results (docs/equivalence.md). Your own pair: --torch-model,
    --paddle-model, --input-shape and, where names differ, --name-map.
    Exit status 0 only if every tensor passes.
    """
    from crossattn.atomic import write_output
    from crossattn.check import DIRECTIONS, MODES
    from crossattn.check_runner import CheckJob, run_checks, start_workers
    from crossattn.frameworks import require, require_installed
    from crossattn.report import failure_details, summary_table, to_json
    from crossattn.model_pair import ModelPair
    from crossattn.spec import load_spec, resolve_spec, shipped_spec_paths
    from crossattn.tolerances import Tolerance, tolerance_for

    user_pair = bool(torch_model or paddle_model or model_args)
    if user_pair and (specs or all_specs):
        raise CrossattnError("check takes SPEC arguments (or --all), or your own pair (--torch-model/--paddle-model),"
                             " not both")
    if not specs and not all_specs and not user_pair:
        raise CrossattnError("check needs SPEC arguments, --all, or your own pair (--torch-model MODULE:FACTORY "
                             "--paddle-model MODULE:FACTORY --input-shape N,C,H,W); see `crossattn specs`")
    if single_step and not layers:
        raise CrossattnError("--single-step applies to the layer trace: add --layers (or use `crossattn diff`)")
    early = None
    if not user_pair and (all_specs or len(specs) > 1) and workers != 1:
        early = start_workers(workers)  # they import the frameworks while this process does the same
        click.get_current_context().call_on_close(early.close)
    # what the run needs is checked before any work starts; paddle is imported where a job first needs it
    # (this process checks the memory bounds first, which need torch only)
    require("torch")
    require_installed("paddle")
    if user_pair:
        pairs = [pair_from_cli(None, torch_model, paddle_model, model_args, name_map, input_shape, "check")]
    else:
        if name_map:
            raise CrossattnError("--name-map applies to your own pair; a spec's twins share their names")
        paths = [resolve_spec(s) for s in specs] + (shipped_spec_paths() if all_specs else [])
        pairs = [ModelPair.from_spec(load_spec(p)) for p in paths]
        for pair in pairs:
            if input_shape:
                pair.input_shape = parse_shape(input_shape)
            if pair.input_shape is None:
                raise CrossattnError(f"spec {pair.spec.path}: `input_shape` is required to check it; add it to "
                                     f"the spec or pass --input-shape")
    if trust_pickle and not weights_path:
        raise CrossattnError("--trust-pickle applies to the checkpoint of --weights")
    if weights_path:
        if len(pairs) != 1:
            raise CrossattnError(f"--weights {weights_path}: one checkpoint starts one model; give one spec or "
                                 f"your own pair, not {len(pairs)}")
        from crossattn.start_weights import load_start_weights

        require("paddle")
        pairs[0].notes += load_start_weights(pairs[0], weights_path, trust_pickle)
    for pair in pairs:
        for note in pair.notes:
            click.echo(f"note: {note}")
    base = tolerance_for(dtype)
    tol = Tolerance(atol if atol is not None else base.atol, rtol if rtol is not None else base.rtol)
    directions = DIRECTIONS if direction == "both" else (direction,)
    modes = MODES if mode == "both" else (mode,)
    started = time.perf_counter()
    jobs = [CheckJob(pair, tuple(directions), tuple(modes), tol, seed, dtype, None if probes else ())
            for pair in pairs]
    results = run_checks(jobs, workers, show_progress=sys.stderr.isatty() and json_path != "-", started=early)
    cases = [case for result in results for case in result.cases]
    elapsed = time.perf_counter() - started
    click.echo(summary_table(cases, full))
    layer_reports = []
    if layers:
        from crossattn.diff import diff_pair
        from crossattn.report import diff_table

        for pair in pairs:
            for direction_name in directions:
                for mode_name in modes:
                    layer_reports.append(diff_pair(pair, direction_name, mode_name, single_step, tol, seed, dtype))
                    click.echo("\n" + diff_table(layer_reports[-1]))
    notes = sorted({n for case in cases for n in case.notes})
    for note in notes:
        click.echo(f"note: {note}")
    details = failure_details(cases)
    if details:
        click.echo(details)
    for case in {(c.spec, c.probe, c.direction): c for c in cases if not c.passed and c.probe != "normal"}.values():
        subject = case.spec if not user_pair else " ".join(
            f"{flag} {value}" for flag, value in (("--torch-model", torch_model), ("--paddle-model", paddle_model),
                                                   ("--model-args", model_args), ("--name-map", name_map),
                                                   ("--input-shape", input_shape)) if value)
        subject += f" --weights {weights_path}" if weights_path else ""
        click.echo(f"hint: `crossattn diff {subject} --probe {case.probe} --mode {case.mode} --direction "
                   f"{case.direction.replace('->', '2')}` traces that input layer by layer")
    passed = sum(c.passed for c in cases)
    what = f"{len(pairs)} spec(s)" if not user_pair else pairs[0].name
    click.echo(f"{passed} passed, {len(cases) - passed} failed ({what}, dtype {dtype}, "
               f"atol {tol.atol:g}, rtol {tol.rtol:g}, {elapsed:.1f}s)")
    if json_path:
        settings = {"dtype": dtype, "atol": tol.atol, "rtol": tol.rtol, "seed": seed,
                    "directions": list(directions), "modes": list(modes),
                    "probes": ["normal", *dict.fromkeys(p for job in jobs for p in job.probe_names)]}
        write_output(json_path, to_json(cases, settings, [r.to_json() for r in layer_reports]), "--json")
        click.echo(f"wrote {json_path}")
    if passed != len(cases):
        sys.exit(1)


@cli.command("diff")
@click.argument("spec", required=False)
@click.option("--direction", type=click.Choice(["torch2paddle", "paddle2torch", "torch->paddle", "paddle->torch"]),
              default="torch2paddle", show_default=True, callback=lambda c, p, v: _direction(v),
              help="Reference framework -> candidate framework.")
@click.option("--mode", type=click.Choice(["train", "eval"]), default="eval", show_default=True)
@click.option("--single-step", is_flag=True,
              help="Feed each candidate layer the reference's input (and incoming gradient): no accumulation.")
@pair_options
@click.option("--transfer/--no-transfer", "do_transfer", default=True, show_default=True,
              help="Your own models: start from weights drawn in the reference (or --weights) and copied into the "
                   "candidate through the name map, as check does; --no-transfer runs each model as its factory "
                   "made it.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--atol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v))
@click.option("--rtol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--probe", type=click.Choice(["normal", "large", "positive", "negative", "resized"]),
              default="normal", show_default=True,
              help="The input: standard normal, or `check`'s large probe (both signs, one batch), or one sign "
                   "alone (all positive / all negative), or standard normal one pixel larger per spatial axis.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--weights", "weights_path", type=click.Path(dir_okay=False), default=None,
              help="Start from this checkpoint (either framework's naming) instead of drawn weights.")
@click.option("--trust-pickle", is_flag=True,
              help="With --weights: allow pickled objects beyond plain tensors (runs code from the file).")
@problems_to_json
def diff_command(spec: str | None, direction: str, mode: str, single_step: bool, torch_model: str | None,
                 paddle_model: str | None, model_args: str | None, name_map: str | None, input_shape: str | None,
                 do_transfer: bool,
                 dtype: str, atol: float | None, rtol: float | None, seed: int, probe: str,
                 json_path: str | None, weights_path: str | None, trust_pickle: bool) -> None:
    """Find the first layer where two implementations diverge.

    Either SPEC (the twins of a spec) or your own pair: --torch-model,
    --paddle-model, --input-shape and, when names differ, --name-map. The
    report names the layer whose code an error comes from (code between
    layers belongs to the enclosing layer), compares running statistics and
    buffers after a train step, and notes known framework roundings.
    """
    import json

    from crossattn.atomic import write_output
    from crossattn.diff import diff_pair
    from crossattn.report import diff_table
    from crossattn.tolerances import Tolerance, tolerance_for

    base = tolerance_for(dtype)
    tol = Tolerance(atol if atol is not None else base.atol, rtol if rtol is not None else base.rtol)
    pair = pair_from_cli(spec, torch_model, paddle_model, model_args, name_map, input_shape, "diff")
    from crossattn.bounds import require_pair_fits

    require_pair_fits(pair, "diff")
    if trust_pickle and not weights_path:
        raise CrossattnError("--trust-pickle applies to the checkpoint of --weights")
    if weights_path:
        from crossattn.start_weights import load_start_weights

        pair.notes += load_start_weights(pair, weights_path, trust_pickle)
    for note in pair.notes:
        click.echo(f"note: {note}")
    report = diff_pair(pair, direction, mode, single_step, tol, seed, dtype, do_transfer, probe)
    click.echo(diff_table(report))
    if json_path:
        write_output(json_path, json.dumps(report.to_json(), indent=2), "--json")
        click.echo(f"wrote {json_path}")
    if not report.passed:
        sys.exit(1)


def _register_subcommands() -> None:
    """Commands defined in their own modules; importing them stays framework-free."""
    from crossattn.cli_align import align_command
    from crossattn.cli_bench import bench_command
    from crossattn.cli_convert import convert_command
    from crossattn.cli_map import map_command
    from crossattn.cli_train import ablation_command, train_command

    cli.add_command(align_command)
    cli.add_command(bench_command)
    cli.add_command(convert_command)
    cli.add_command(map_command)
    cli.add_command(train_command)
    cli.add_command(ablation_command)


_register_subcommands()


def main() -> None:
    """Entry point: user mistakes print one paragraph and exit 2, never a traceback."""
    # paddle warns at import that ccache is missing (it concerns building C++ extensions only); a user's own
    # model module may import paddle before crossattn does
    warnings.filterwarnings("ignore", message="No ccache found")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CrossattnError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


def console() -> None:
    """The `crossattn` script: `main`, then the process ends without the interpreter's teardown.

    Once a command's output is written and flushed, nothing is left to do but
    free what the OS frees anyway; torch's and paddle's module teardown takes
    0.4-0.9 s after a check. A crash (an uncaught exception) still ends the
    normal way, with its traceback. `main` itself raises SystemExit, for callers
    in the same process.
    """
    try:
        main()
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
