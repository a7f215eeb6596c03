"""`crossattn check` end to end: table, JSON, exit status."""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

import cli


def test_check_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli.cli, ["check", "non_local_dot_product", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "non_local_dot_product" in result.output and "PASS" in result.output
    assert "5 passed, 0 failed" in result.output  # 2 directions x 2 modes + the large input probe
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["settings"]["dtype"] == "float64"
    tensors = {c["tensor"] for case in data["cases"] for c in case["comparisons"]}
    assert {"output", "input.grad", "theta.weight.grad", "W.1.running_var"} <= tensors


def test_absurdly_tight_tolerance_fails_with_status_1():
    result = CliRunner().invoke(cli.cli, ["check", "non_local_embedded_gaussian", "--atol", "0", "--rtol", "0",
                                          "--direction", "torch2paddle", "--mode", "eval"])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_check_without_specs_is_a_user_error():
    result = CliRunner().invoke(cli.cli, ["check"], standalone_mode=False)
    assert result.exception is not None and "needs SPEC" in str(result.exception)


def test_unknown_spec_name_is_a_user_error():
    result = CliRunner().invoke(cli.cli, ["check", "no_such_spec"], standalone_mode=False)
    assert "no shipped spec of that name" in str(result.exception)


def test_single_step_without_layers_is_a_user_error():
    result = CliRunner().invoke(cli.cli, ["check", "se_default", "--single-step"], standalone_mode=False)
    assert "--layers" in str(result.exception)


def test_a_bug_only_a_probe_reaches_fails_and_diff_traces_that_probe(monkeypatch):
    from tests.test_mutations import MUTATIONS

    relu6 = next(m for m in MUTATIONS if m.id == "se_relu6")  # activations of a normal input never reach 6
    relu6.apply(monkeypatch)
    result = CliRunner().invoke(cli.cli, ["check", "se_default", "--direction", "torch2paddle", "--mode", "eval"])
    assert result.exit_code == 1, result.output
    assert "eval, x large" in result.output and "--probe large" in result.output
    skipped = CliRunner().invoke(cli.cli, ["check", "se_default", "--direction", "torch2paddle", "--mode", "eval",
                                           "--no-probes"])
    assert skipped.exit_code == 0  # what one standard-normal input proves
    traced = CliRunner().invoke(cli.cli, ["diff", "se_default", "--probe", "large"])
    assert traced.exit_code == 1 and "forward error first appears in `(model)`" in traced.output, traced.output


def test_the_console_script_flushes_its_output_and_keeps_the_exit_status():
    """`python -m crossattn` ends without the interpreter's teardown: what it wrote must still arrive."""
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "crossattn", *args], capture_output=True, text=True,
                              timeout=300)

    done = run("check", "se_default", "--mode", "eval", "--direction", "torch2paddle", "--no-probes")
    assert done.returncode == 0 and "1 passed, 0 failed" in done.stdout, done.stdout + done.stderr
    wrong = run("check", "se_defualt")
    assert wrong.returncode == 2 and "se_default" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_missing_framework_is_named_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "paddle", None)  # imports of paddle fail as if it were not installed
    result = CliRunner().invoke(cli.cli, ["check", "se_default", "eca_default"], standalone_mode=False)
    assert "needs paddle, which is not installed" in str(result.exception)
    assert "paddlepaddle" in str(result.exception)


def test_an_output_onto_the_commands_own_input_is_refused(tmp_path):
    """`check SPEC --json SPEC` replaced the spec with the report, and `map --model-args A -o A` the model
    arguments with the name map; both exited 0."""
    from crossattn.spec import resolve_spec

    spec = tmp_path / "se.yaml"
    spec.write_text(resolve_spec("se_default").read_text())
    before = spec.read_bytes()
    for command in (["check", str(spec), "--workers", "1", "--json", str(spec)],
                    ["diff", str(spec), "--json", str(tmp_path / "." / "se.yaml")]):
        result = CliRunner().invoke(cli.cli, command, standalone_mode=False)
        assert "that is the YAML file this command read" in str(result.exception), result.output
        assert spec.read_bytes() == before
    result = CliRunner().invoke(cli.cli, ["check", str(spec), "--workers", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0 and (tmp_path / "r.json").is_file()


def test_a_plot_that_cannot_be_written_is_a_user_error_leaving_nothing(tmp_path):
    """align's and the ablation's plots wrote a fixed temp name beside the target and raised the OSError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pytest

    from crossattn.atomic import save_figure
    from crossattn.errors import CrossattnError

    blocker = tmp_path / "a.pt"
    blocker.write_text("a file, not a folder")
    figure = plt.figure()
    with pytest.raises(CrossattnError, match=r"--plot .*a.pt/x.png: cannot write it"):
        save_figure(figure, blocker / "x.png")
    plt.close(figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_a_negative_seed_is_refused_by_every_command_that_takes_one(tmp_path):
    """numpy's `expected non-negative integer` ended check, diff, align and convert in a traceback."""
    for command in (["check", "se_default"], ["diff", "se_default"], ["align", "se_default"],
                    ["convert", str(tmp_path / "a.pt"), str(tmp_path / "b.pdparams"), "--spec", "se_default"]):
        result = CliRunner().invoke(cli.cli, command + ["--seed", "-1"])
        assert result.exit_code == 2 and "'--seed': -1 is not in the range x>=0" in result.output, result.output


def test_small_memory_figures_and_a_file_in_the_path_are_said_plainly(tmp_path):
    """`needs about 0.0 GiB, more than the 0.0 GiB`, and `File exists` for a parent that is a file."""
    import pytest

    from crossattn.atomic import atomic_write_text
    from crossattn.bounds import gib
    from crossattn.errors import CrossattnError

    assert (gib(61_440), gib(1024), gib(3 << 30), gib(12)) == ("60.0 KiB", "1.0 KiB", "3.0 GiB", "12 bytes")
    (tmp_path / "a.pt").write_text("x")
    with pytest.raises(CrossattnError, match=r"a.pt is a file, not a folder"):
        atomic_write_text(tmp_path / "a.pt" / "r.json", "{}")


def test_a_framework_that_is_installed_but_fails_to_import_is_not_called_missing(monkeypatch):
    import importlib

    import pytest

    from crossattn import frameworks
    from crossattn.errors import CrossattnError

    def broken(name, *args, **kwargs):
        raise ImportError("generic_type: type \"AmpLevel\" is already registered!")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(CrossattnError, match="installed but failed to import"):
        frameworks.require("torch")
