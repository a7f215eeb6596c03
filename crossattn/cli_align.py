"""`crossattn align`: N training steps of a spec's twins or your own pair, side by side.

Frameworks are imported inside the command, so `--help` stays instant.
"""

from __future__ import annotations

import json
import sys

import click

from crossattn.errors import CrossattnError, OptionError
from crossattn.model_pair import pair_from_cli, pair_options


def _finite(param: click.Parameter, value: float | None) -> float | None:
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter("must be a finite number", param=param)
    return value


@click.command("align")
@click.argument("spec", required=False)
@pair_options
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--direction", type=click.Choice(["torch2paddle", "paddle2torch"]), default="torch2paddle",
              show_default=True, help="Weights drawn in (and judged against) the first framework.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True,
              help="adam/sgd: L2 added to the gradient; adamw: decoupled.")
@click.option("--betas", default="0.9,0.999", show_default=True, help="Adam/AdamW beta1,beta2.")
@click.option("--eps", type=float, default=1e-8, show_default=True, help="Adam/AdamW epsilon.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum (0: plain SGD).")
@click.option("--nesterov", is_flag=True, help="SGD: Nesterov momentum.")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "step"]), default="constant",
              show_default=True, help="Per-step learning rate (cosine to --min-lr at the last step).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--step-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="step schedule: multiply the rate by --gamma every this many steps.")
@click.option("--gamma", type=float, default=0.1, show_default=True)
@click.option("--min-lr", type=float, default=0.0, show_default=True)
@click.option("--bn-mode", type=click.Choice(["train", "eval"]), default="train", show_default=True,
              help="BatchNorm with batch statistics (train) or running statistics (eval).")
@click.option("--bn-stats", type=click.Choice(["torch", "paddle", "native"]), default=None,
              help="Running-statistics rule in train mode (native: each framework its own) "
                   "[default: the spec's bn_stats, else torch].")
@click.option("--atol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v))
@click.option("--rtol", type=click.FloatRange(min=0), default=None, callback=lambda c, p, v: _finite(p, v))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the weights, inputs and labels.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON ('-': to stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: both loss curves, and their difference on a log axis.")
def align_command(spec: str | None, torch_model: str | None, paddle_model: str | None, model_args: str | None,
                  name_map: str | None, input_shape: str | None, steps: int, batch_size: int, dtype: str,
                  direction: str, optimizer: str, lr: float, weight_decay: float, betas: str, eps: float,
                  momentum: float, nesterov: bool, schedule: str, warmup_steps: int, step_every: int, gamma: float,
                  min_lr: float, bn_mode: str, bn_stats: str, atol: float | None, rtol: float | None, seed: int,
                  json_path: str | None, plot_path: str | None) -> None:
    """Train SPEC's twins (or your own pair) N steps side by side and report where they part.

    Same initial weights, same batches, each framework's own optimizer (with
    crossattn's translations). Per step: both losses, their difference, the
    parameters' norm-relative difference and the tensor furthest from its
    bound; at the end every parameter, buffer and optimizer moment. Exit 0
    only when every step and the final state are within tolerance.
    Dropout is held off in both frameworks (its masks are each framework's
    own random draws).
    """
    from crossattn.align import PLOT_HINT, AlignSettings, align_config, plot, table
    from crossattn.atomic import write_output
    from crossattn.tolerances import Tolerance, tolerance_for

    try:
        beta1, beta2 = (float(v) for v in betas.split(","))
    except ValueError:
        raise CrossattnError(f"--betas expects two comma-separated numbers, e.g. 0.9,0.999; got {betas!r}") from None
    try:
        config = align_config(steps=steps, optimizer=optimizer, lr=lr, weight_decay=weight_decay, adam_beta1=beta1,
                              adam_beta2=beta2, adam_epsilon=eps, momentum=momentum, nesterov=nesterov,
                              schedule=schedule, warmup_epochs=warmup_steps, step_epochs=step_every,
                              step_gamma=gamma, min_lr=min_lr, bn_stats=bn_stats)
    except OptionError as exc:
        flag = {"adam_beta1": "--betas", "adam_beta2": "--betas", "adam_epsilon": "--eps",
                "warmup_epochs": "--warmup-steps", "step_epochs": "--step-every", "step_gamma": "--gamma"}.get(
            exc.key, "--" + exc.key.replace("_", "-"))
        raise CrossattnError(f"{flag}: {exc.message}") from None
    base = tolerance_for(dtype)
    tol = Tolerance(atol if atol is not None else base.atol, rtol if rtol is not None else base.rtol)
    settings = AlignSettings(steps=steps, batch_size=batch_size, dtype=dtype, source=direction.split("2")[0],
                             bn_train=bn_mode == "train", seed=seed, tol=tol)
    pair = pair_from_cli(spec, torch_model, paddle_model, model_args, name_map, input_shape, "align")
    to_stdout = json_path == "-"
    say = (lambda s: click.echo(s, err=True)) if to_stdout else click.echo
    for note in pair.notes:
        say(f"note: {note}")
    report = _run_with_progress(pair, config, settings, quiet=to_stdout or not sys.stdout.isatty())
    for note in report.notes:
        say(f"note: {note}")
    if to_stdout:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(table(report))
        if json_path:
            write_output(json_path, json.dumps(report.to_json(), indent=2) + "\n", "--json")
            click.echo(f"wrote {json_path}")
    if plot_path:
        say(f"wrote {plot_path}" if plot(report, plot_path) else PLOT_HINT)
    if not report.passed:
        sys.exit(1)


def _run_with_progress(pair, config, settings, quiet: bool):
    from crossattn.align import align

    if quiet:
        return align(pair, config, settings)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("align"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("align", total=settings.steps)
        return align(pair, config, settings, progress=lambda done, total: bar.update(task, completed=done))
