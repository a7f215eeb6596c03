"""`crossattn train` and `crossattn ablation`: click commands registered by cli.py.

Frameworks are imported inside the commands, so `--help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from crossattn.errors import CrossattnError, OptionError

DEVICES = click.Choice(["cpu", "gpu", "auto"])


@click.command("train")
@click.option("--spec", "spec_arg", metavar="MODEL_SPEC", help="Model spec: a path or a shipped spec name.")
@click.option("--config", "config_arg", metavar="TRAIN_YAML",
              help="Training config: a path or a shipped name (seed004, fast_cpu).")
@click.option("--framework", type=click.Choice(["torch", "paddle"]),
              help="Framework to train in; with --resume, the other one continues the run (weights, BatchNorm "
                   "statistics and optimizer state translated).")
@click.option("--device", type=DEVICES, default="auto", show_default=True,
              help="gpu: CUDA or an error; auto: CUDA when the framework sees it.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics, checkpoints and copies of the spec and config.")
@click.option("--epochs", type=int, help="Override the config's epochs (with --resume: the new total).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue this run directory from its newest checkpoint.")
@click.option("--dataset", type=click.Choice(["cifar10", "mnist", "synthetic"]), help="Override the dataset.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--download", is_flag=True, help="Download the dataset when it is missing.")
@click.option("--seed", type=int, help="Override the config's seed.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Override the config's dtype; float64 runs of the two frameworks agree step by step.")
@click.option("--stop-after", type=int, metavar="N",
              help="Stop after N epochs of this invocation (continue later with --resume).")
def train_command(spec_arg: str | None, config_arg: str | None, framework: str | None, device: str,
                  run_dir: Path | None, epochs: int | None, resume_dir: Path | None, dataset: str | None,
                  data_dir: str | None, download: bool, seed: int | None, dtype: str | None,
                  stop_after: int | None) -> None:
    """Train a model spec in one framework with a training config.

    Both frameworks start from the same weights (seeded numpy init), see the
    same batches, the same augmentation and the same learning rate per step.
    Each epoch appends to RUN_DIR/metrics.jsonl and metrics.csv and writes a
    checkpoint atomically; --resume RUN_DIR continues with the next epoch.
    """
    from crossattn.spec import resolve_spec
    from crossattn.training import runner
    from crossattn.training.config import load_train_config, resolve_train_config

    if stop_after is not None and stop_after < 1:
        raise CrossattnError("--stop-after must be at least 1")
    if resume_dir is not None:
        if spec_arg or config_arg or run_dir or dataset or seed is not None or dtype:
            raise CrossattnError("--resume takes the spec, config, dataset, seed and dtype from the run directory; "
                                 "drop --spec/--config/--run-dir/--dataset/--seed/--dtype")
        runner.resume_run(resume_dir, device=device, epochs=epochs, log=click.echo, stop_after=stop_after,
                          framework=framework, data_dir=data_dir, download=download)
        return
    missing = [name for name, value in (("--spec", spec_arg), ("--config", config_arg),
                                        ("--framework", framework), ("--run-dir", run_dir)) if not value]
    if missing:
        raise CrossattnError(f"train needs {', '.join(missing)} (or --resume RUN_DIR)")
    config = load_train_config(resolve_train_config(config_arg))
    overrides = {k: v for k, v in (("epochs", epochs), ("dataset", dataset), ("data_dir", data_dir),
                                   ("seed", seed), ("dtype", dtype)) if v is not None}
    if download:
        overrides["download"] = True
    if overrides:
        try:
            config = config.replace(**overrides)
        except OptionError as exc:
            flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
            raise CrossattnError(f"{resolve_train_config(config_arg)} with {flags}: {exc}") from None
    runner.train(resolve_spec(spec_arg), config, framework, device, run_dir, log=click.echo, stop_after=stop_after)


@click.command("ablation")
@click.argument("ablation_yaml")
@click.option("--framework", type=click.Choice(["torch", "paddle", "both"]), default="torch", show_default=True)
@click.option("--epochs", type=int, help="Override the config's epochs for every run.")
@click.option("--devices", help="Comma-separated GPU ids, e.g. 0,1: one run per GPU at a time, in parallel.")
@click.option("--device", type=DEVICES, default="auto", show_default=True,
              help="Device of sequential runs (without --devices).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: runs/ablation-NAME).")
@click.option("--dataset", type=click.Choice(["cifar10", "mnist", "synthetic"]),
              help="Override the dataset of every run (synthetic needs no download).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset files are.")
@click.option("--download", is_flag=True, help="Download the dataset when it is missing.")
def ablation_command(ablation_yaml: str, framework: str, epochs: int | None, devices: str | None, device: str,
                     out_dir: Path | None, dataset: str | None, data_dir: str | None, download: bool) -> None:
    """Train an ablation's baseline and variants; write ablation.md, ablation.csv and ablation.png.

    ABLATION_YAML is a path or a shipped name (seed004, seed004_faithful). Finished runs in the
    output folder are read back, unfinished ones resumed. With --devices each
    GPU runs one training subprocess at a time (CUDA_VISIBLE_DEVICES set per
    process); without, runs go one after another in this process.
    """
    from crossattn.training.ablation import load_ablation, resolve_ablation, run_ablation

    path = resolve_ablation(ablation_yaml)
    ids = [d.strip() for d in devices.split(",") if d.strip()] if devices else []
    if ids:
        from crossattn.training.runner import twin

        module = twin("torch" if framework in ("torch", "both") else "paddle")
        try:
            module.resolve_device("gpu")
        except CrossattnError:
            click.echo("note: --devices given but no GPU is visible; running sequentially on the CPU")
            ids, device = [], "cpu"
    out = out_dir or Path("runs") / f"ablation-{load_ablation(path).name}"
    overrides = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v is not None}
    if download:
        overrides["download"] = True
    result = run_ablation(path, framework, out, epochs=epochs, devices=ids, device=device, log=click.echo,
                          overrides=overrides)
    click.echo(result.table.read_text(encoding="utf-8"))
    click.echo(f"wrote {result.table}, {result.csv}" + (f", {result.plot}" if result.plot else ""))
