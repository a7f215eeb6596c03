"""`crossattn convert`: a checkpoint from one framework or format to another, verified.

Registered by cli.py; heavy imports happen inside the command so `--help` stays instant.
"""

from __future__ import annotations

import sys

import click

FRAMEWORK_CHOICE = click.Choice(["torch", "paddle"])


@click.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--spec", "spec_arg", required=True,
              help="The model the checkpoint belongs to: a shipped spec name or a spec file.")
@click.option("--to", "to_framework", type=FRAMEWORK_CHOICE, default=None,
              help="Naming of DST when its format is neutral (.safetensors, .npz); default: the other framework.")
@click.option("--from", "from_framework", type=FRAMEWORK_CHOICE, default=None,
              help="Naming of SRC when its format is neutral and neither metadata nor the keys tell.")
@click.option("--key", default=None, help="Entry of a training checkpoint that holds the weights (e.g. state_dict).")
@click.option("--strip-prefix", default=None, help="Prefix to remove from every key (e.g. 'module.').")
@click.option("--trust-pickle", is_flag=True,
              help="Load pickles that need more than plain arrays (this runs code stored in the file).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Forward both twins in float64, one with SRC and one with DST as written, and compare.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the verification input.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert weights holding NaN or infinite values anyway.")
@click.option("--allow-lossy-cast", is_flag=True,
              help="Convert tensors whose cast to the model's dtype loses information (complex, out of range).")
def convert_command(src: str, dst: str, spec_arg: str, to_framework: str | None, from_framework: str | None,
                    key: str | None, strip_prefix: str | None, trust_pickle: bool, verify: bool, seed: int,
                    allow_nonfinite: bool, allow_lossy_cast: bool) -> None:
    """Convert checkpoint SRC into DST for the model of --spec.

    Formats follow the extensions: .pt/.pth (torch), .pdparams (paddle),
    .safetensors and .npz (either; see --to/--from). Weights inside a training
    checkpoint and wrapper prefixes (module., model.) are found automatically.
    DST appears only if the conversion and its verification succeed.
    Exit status: 0 success, 1 verification failed, 2 a mistake in the input.
    """
    import dataclasses

    from crossattn.bounds import require_check_fits
    from crossattn.spec import load_spec, resolve_spec
    from weight_transfer.convert import Twins, convert

    spec = load_spec(resolve_spec(spec_arg))
    require_check_fits(spec if verify else dataclasses.replace(spec, input_shape=None), "convert")
    report = convert(src, dst, Twins.from_spec(spec), to=to_framework, source=from_framework, key=key,
                     strip_prefix=strip_prefix, trust_pickle=trust_pickle, verify=verify, seed=seed,
                     allow_nonfinite=allow_nonfinite, allow_lossy_cast=allow_lossy_cast)
    for line in report.lines():
        click.echo(line)
    if not report.passed:
        click.echo(f"verification failed: {dst} was not written", err=True)
        sys.exit(1)
