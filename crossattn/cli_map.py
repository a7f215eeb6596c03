"""`crossattn map`: propose the layer-name map of your own torch/paddle pair, as YAML to review.

Registered by cli.py; heavy imports happen inside the command so `--help` stays instant.
"""

from __future__ import annotations

import sys

import click

from crossattn.model_pair import pair_options


def map_yaml(mapping: dict[str, str], notes: list[str], ambiguous: list[str], torch_model: str,
             paddle_model: str) -> str:
    """The map as YAML, headed by comments saying where it came from and what was assumed."""
    import yaml

    lines = ["# Layer-name map: torch layer (or prefix; '' is the whole model) -> paddle layer (or prefix).",
             f"# Proposed by `crossattn map` for --torch-model {torch_model} --paddle-model {paddle_model}.",
             "# Review it, then pass it to check, diff, convert or align with --name-map FILE.",
             "# What was assumed:"]
    lines += [f"#   - {note}" for note in notes]
    if ambiguous:
        lines.append("# NOT DECIDED: these layers could not be paired one to one; add their entries by hand:")
        lines += [f"#   - {item}" for item in ambiguous]
    body = yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False, allow_unicode=True) if mapping \
        else "{}\n"
    return "\n".join(lines) + "\n" + body


@click.command("map")
@pair_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the map here (YAML); default: print it.")
def map_command(torch_model: str | None, paddle_model: str | None, model_args: str | None, name_map: str | None,
                input_shape: str | None, output: str | None) -> None:
    """Propose the torch -> paddle layer-name map of your own pair.

    Common prefixes first (a `backbone.` wrapper, `module.`), then structure:
    layers still unmatched are paired in module order by layer kind and tensor
    shapes. What was assumed is written as comments; layers that cannot be
    paired one to one are listed, never guessed. Exit status: 0 a complete
    map, 1 a partial map (see its comments), 2 a mistake in the input.
    Takes the pair options every command takes; --input-shape is not needed.
    """
    from crossattn.atomic import write_output
    from crossattn.model_pair import ModelPair
    from crossattn.name_mapping import propose_name_map

    from crossattn.errors import CrossattnError

    if not torch_model or not paddle_model:
        raise CrossattnError("map needs your own pair: --torch-model MODULE:FACTORY --paddle-model MODULE:FACTORY "
                             "(a spec's twins share their names)")
    if name_map:
        raise CrossattnError("map proposes the name map; drop --name-map (pass the file it writes to the other "
                             "commands)")
    pair = ModelPair.from_factories(torch_model, paddle_model, model_args)  # --input-shape: not needed here
    proposal = propose_name_map(pair.slots("torch"), pair.slots("paddle"), strict=False)
    text = map_yaml(proposal.mapping, proposal.notes, proposal.ambiguous, torch_model, paddle_model)
    if output:
        write_output(output, text, "--output")
        for note in proposal.notes:
            click.echo(f"note: {note}")
        for item in proposal.ambiguous:
            click.echo(f"not decided: {item}")
        click.echo(f"wrote {output} ({len(proposal.mapping)} entr{'y' if len(proposal.mapping) == 1 else 'ies'})")
    else:
        click.echo(text, nl=False)
    if proposal.ambiguous:
        click.echo(f"the map is incomplete: {len(proposal.ambiguous)} group(s) of layers could not be paired; "
                   f"add their entries by hand", err=True)
        sys.exit(1)
