"""Spec loading: errors name file, key path and line; nothing needs a framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from crossattn.errors import SpecError
from crossattn.spec import load_spec, shipped_spec_paths


def _write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    return info.value


def test_every_shipped_spec_loads():
    paths = shipped_spec_paths()
    assert len(paths) >= 8
    for path in paths:
        spec = load_spec(path)
        assert spec.input_shape, path


def test_malformed_yaml_names_the_line(tmp_path):
    err = _error(tmp_path, """\
        type: non_local
        options:
          in_channels: [16
        """)
    assert err.line is not None and err.line >= 3
    assert "malformed YAML" in str(err) and "spec.yaml" in str(err)


def test_wrong_type_names_key_and_line(tmp_path):
    err = _error(tmp_path, """\
        type: non_local
        input_shape: [2, 16, 8, 8]
        options:
          in_channels: sixteen
        """)
    assert err.key == "options.in_channels"
    assert err.line == 4
    assert "expected an integer" in err.message and "'sixteen'" in err.message


def test_unknown_option_lists_known_ones(tmp_path):
    err = _error(tmp_path, """\
        type: non_local
        options:
          in_channels: 16
          bottleneck: 2
        """)
    assert err.key == "options.bottleneck" and err.line == 4
    assert "known options" in err.message and "reduction" in err.message


def test_unknown_top_level_key(tmp_path):
    err = _error(tmp_path, "type: non_local\nshape: [1, 2]\noptions: {in_channels: 4}\n")
    assert err.key == "shape" and err.line == 2


def test_channels_not_divisible_by_reduction(tmp_path):
    err = _error(tmp_path, """\
        type: non_local
        options:
          in_channels: 10
          reduction: 4
        """)
    assert err.key == "options.reduction" and "divisible" in err.message


def test_unknown_block_type_lists_known_types(tmp_path):
    err = _error(tmp_path, "type: nonlocal\noptions: {}\n")
    assert err.key == "type" and err.line == 1
    assert "non_local" in err.message and "known types" in err.message


@pytest.mark.parametrize("written, meant", [("nonlocal", "non_local"), ("selective_kernal", "selective_kernel"),
                                            ("se_block", "se"), ("global_context_block", "global_context")])
def test_a_misspelt_or_extended_type_gets_did_you_mean(tmp_path, written, meant):
    err = _error(tmp_path, f"type: {written}\noptions: {{}}\n")
    assert f"did you mean `{meant}`?" in err.message


def test_missing_required_option(tmp_path):
    err = _error(tmp_path, "type: non_local\noptions:\n  mode: gaussian\n")
    assert err.key == "options.in_channels" and "required" in err.message


def test_input_shape_must_fit_the_block(tmp_path):
    err = _error(tmp_path, "type: non_local\ninput_shape: [2, 8, 8, 8]\noptions: {in_channels: 16}\n")
    assert err.key == "input_shape" and err.line == 2 and "in_channels" in err.message


def test_duplicate_key_is_an_error(tmp_path):
    err = _error(tmp_path, "type: non_local\ntype: non_local\n")
    assert "duplicate key" in err.message


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")


def test_cli_spec_error_is_one_paragraph_with_status_2(tmp_path):
    path = _write(tmp_path, "type: non_local\noptions:\n  in_channels: -3\n")
    result = subprocess.run([sys.executable, "-m", "crossattn", "validate", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "line 3" in result.stderr and "options.in_channels" in result.stderr and "> 0" in result.stderr


def test_help_and_validation_import_no_framework(tmp_path):
    path = _write(tmp_path, "type: non_local\noptions: {in_channels: 4}\n")
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        import cli
        runner = CliRunner()
        assert runner.invoke(cli.cli, ["--help"]).exit_code == 0
        assert runner.invoke(cli.cli, ["specs"]).exit_code == 0
        assert "yaml" not in sys.modules  # listing reads no YAML
        result = runner.invoke(cli.cli, ["validate", {str(path)!r}])
        assert result.exit_code == 0, result.output
        assert runner.invoke(cli.cli, ["specs"]).exit_code == 0
        loaded = [m for m in ("torch", "paddle") if m in sys.modules]
        assert not loaded, loaded
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("text,key,line,message", [
    ("type: non_local\noptions: false\n", "options", 2, "expected a mapping"),
    ("type: non_local\noptions: [in_channels]\n", "options", 2, "expected a mapping"),
    ("type: non_local\n1: x\noptions: {in_channels: 4}\n", "1", 2, "unknown top-level key"),
    ("type: non_local\noptions:\n  in_channels: 4\n  true: 1\n", "options.True", 4, "unknown option"),
    ("type: non_local\n? [a, b]\n: 1\n", None, 2, "plain name"),
])
def test_yaml_edge_cases_name_key_and_line(tmp_path, text, key, line, message):
    err = _error(tmp_path, text)
    assert err.key == key and err.line == line and message in err.message, (err.key, err.line, str(err))
