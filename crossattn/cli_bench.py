"""`crossattn bench`: forward and forward+backward time, memory, parameters and FLOPs of both twins.

Registered by cli.py; heavy imports happen in the measuring child processes, so `--help` stays instant.
"""

from __future__ import annotations

import json
import sys

import click

from crossattn.errors import CrossattnError
from crossattn.model_pair import pair_options


@click.command("bench")
@click.argument("specs", nargs=-1)
@click.option("--framework", type=click.Choice(["both", "torch", "paddle"]), default="both", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size (default: the spec's input).")
@click.option("--size", default=None, help="Spatial size HxW (or DxHxW; one number: square), default the spec's.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True, help="Timed calls of each.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed calls first.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU threads for both frameworks (0: all cores, the same for both).")
@pair_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every figure to this JSON file ('-': standard output, nothing else printed).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG bar chart of the median times.")
def bench_command(specs: tuple[str, ...], framework: str, device: str, batch: int | None, size: str | None,
                  dtype: str, repeat: int, warmup: int, threads: int, torch_model: str | None,
                  paddle_model: str | None, model_args: str | None, name_map: str | None, input_shape: str | None,
                  json_path: str | None, plot_path: str | None) -> None:
    """Time SPECS (or your own pair) in torch and paddle, side by side.

    Each model and framework runs in its own process: forward (eval, no graph)
    and forward+backward (train mode) after --warmup calls, --repeat timed
    calls each, the device synchronised after every call. Reported: median and
    range, peak memory (GPU: allocator peak; CPU: the process's peak RSS),
    parameters, forward GFLOPs and paddle's time over torch's.
    """
    import os

    from crossattn import bench
    from crossattn.atomic import write_output

    jobs = _jobs(specs, framework, device, batch, bench.parse_size(size), dtype, repeat, warmup,
                 threads or os.cpu_count() or 1, torch_model, paddle_model, model_args, input_shape)
    quiet = json_path == "-"
    progress = _Progress(len(jobs), enabled=not quiet and sys.stderr.isatty())
    try:
        rows = bench.run_bench(jobs, on_start=progress.start, on_done=progress.done)
    finally:
        progress.close()
    settings = {"framework": framework, "device": device, "batch": batch, "size": size, "dtype": dtype,
                "repeat": repeat, "warmup": warmup, "threads": threads or os.cpu_count(),
                "command": "crossattn bench " + " ".join(sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv
                                                         else sys.argv[1:])}
    report = bench.report_json(rows, settings)
    if quiet:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(bench.table(rows))
        info = report["machine"]
        click.echo(f"machine: {info['processor']}, {info['cores']} cores, load average "
                   f"{'/'.join(map(str, info.get('load_average', [])))}; {repeat} timed calls after {warmup} "
                   f"warm-up; times: median (min-max) ms")
    if json_path and not quiet:
        write_output(json_path, json.dumps(report, indent=2), "--json")
        click.echo(f"wrote {json_path}")
    if plot_path:
        if bench.plot(rows, plot_path):
            if not quiet:
                click.echo(f"wrote {plot_path}")
        else:
            click.echo("plot skipped: matplotlib is not installed; pip install 'crossattn[plot]'", err=True)


def _jobs(specs, framework, device, batch, size, dtype, repeat, warmup, threads, torch_model, paddle_model,
          model_args, input_shape):
    """One job per model and framework; each pair is resolved here (errors before any child starts)."""
    from crossattn.bench import BenchJob, input_shape_for
    from crossattn.model_pair import pair_from_cli

    frameworks = ("torch", "paddle") if framework == "both" else (framework,)
    if specs and (torch_model or paddle_model or model_args):
        raise CrossattnError("bench takes SPECS or your own pair (--torch-model/--paddle-model), not both")
    if not specs:
        pair = pair_from_cli(None, torch_model, paddle_model, model_args, None, input_shape, "bench")
        model = {"torch": torch_model, "paddle": paddle_model, "model_args": model_args}
        shape = input_shape_for(pair.input_shape, batch, size, pair.origin)
        return [BenchJob(pair.name, model, fw, device, dtype, shape, repeat, warmup, threads) for fw in frameworks]
    jobs = []
    for arg in specs:
        pair = pair_from_cli(arg, input_shape=input_shape, command="bench")
        shape = input_shape_for(pair.input_shape, batch, size, pair.origin)
        jobs += [BenchJob(pair.name, {"spec": str(pair.spec.path)}, fw, device, dtype, shape, repeat, warmup,
                          threads) for fw in frameworks]
    return jobs


class _Progress:
    """rich progress on stderr: measurements done, the one running, elapsed and ETA; silent when off."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def start(self, job) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{job.name} {job.framework} "
                                                   f"{'x'.join(map(str, job.input_shape))}")

    def done(self, job) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
