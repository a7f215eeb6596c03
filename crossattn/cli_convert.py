"""`crossattn convert`: a checkpoint from one framework or format to another, verified.

Registered by cli.py; heavy imports happen inside the command so `--help` stays instant.
"""

from __future__ import annotations

import sys

import click

from crossattn.model_pair import pair_from_cli, pair_options

FRAMEWORK_CHOICE = click.Choice(["torch", "paddle"])


@click.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--spec", "spec_arg", default=None,
              help="The model the checkpoint belongs to: a shipped spec name or a spec file (or give your own "
                   "pair with --torch-model/--paddle-model).")
@pair_options
@click.option("--to", "to_framework", type=FRAMEWORK_CHOICE, default=None,
              help="Naming of DST when its format is neutral (.safetensors, .npz); default: the other framework.")
@click.option("--from", "from_framework", type=FRAMEWORK_CHOICE, default=None,
              help="Naming of SRC when its format is neutral and neither metadata nor the keys tell.")
@click.option("--key", default=None, help="Entry of a training checkpoint that holds the weights (e.g. state_dict).")
@click.option("--strip-prefix", default=None, help="Prefix to remove from every key (e.g. 'module.').")
@click.option("--trust-pickle", is_flag=True,
              help="Load pickles that need more than plain arrays (this runs code stored in the file).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Read DST back and compare it with SRC tensor by tensor, then forward both twins (one with "
                   "SRC, one with DST as written) on the spec's input and compare the outputs.")
@click.option("--full-verify", is_flag=True,
              help="Verification also forwards both twins in float64 (slower, about twice the memory).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the verification input.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert weights holding NaN or infinite values anyway.")
@click.option("--allow-lossy-cast", is_flag=True,
              help="Convert tensors whose cast to the model's dtype loses information (complex, out of range).")
def convert_command(src: str, dst: str, spec_arg: str | None, torch_model: str | None, paddle_model: str | None,
                    model_args: str | None, name_map: str | None, input_shape: str | None,
                    to_framework: str | None, from_framework: str | None, key: str | None, strip_prefix: str | None,
                    trust_pickle: bool, verify: bool, full_verify: bool, seed: int, allow_nonfinite: bool,
                    allow_lossy_cast: bool) -> None:
    """Convert checkpoint SRC into DST for the model of --spec, or for your own pair.

    Your own pair: --torch-model MODULE:FACTORY --paddle-model MODULE:FACTORY,
    with --name-map FILE (or auto) where the layer names differ and
    --input-shape for the verification.

    Formats follow the extensions: .pt/.pth (torch), .pdparams (paddle),
    .safetensors and .npz (either; see --to/--from). Weights inside a training
    checkpoint and wrapper prefixes (module., model.) are found automatically.
    DST appears only if the conversion and its verification succeed.
    Exit status: 0 success, 1 verification failed, 2 a mistake in the input.
    """
    from crossattn.bounds import require_pair_fits
    from weight_transfer.convert import convert

    pair = pair_from_cli(spec_arg, torch_model, paddle_model, model_args, name_map, input_shape, "convert",
                         need_input=False)
    require_pair_fits(pair, "convert", with_input=verify, parameters_dominate=True)
    for note in pair.notes:
        click.echo(f"note: {note}")
    report = convert(src, dst, pair, to=to_framework, source=from_framework, key=key,
                     strip_prefix=strip_prefix, trust_pickle=trust_pickle, verify=verify, seed=seed,
                     full_verify=full_verify, allow_nonfinite=allow_nonfinite, allow_lossy_cast=allow_lossy_cast)
    for line in report.lines():
        click.echo(line)
    if not report.passed:
        click.echo(f"verification failed: {dst} was not written", err=True)
        sys.exit(1)
