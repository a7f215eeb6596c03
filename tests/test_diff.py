"""Layer-by-layer divergence: a planted defect is reported first, exactly where it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import cli
from crossattn.diff import diff_models, diff_spec, transfer_by_name_map
from crossattn.spec import load_spec, resolve_spec
from tests.fixtures import user_pair


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("single_step", [False, True])
def test_twins_have_no_divergent_layer(mode, single_step):
    report = diff_spec(load_spec(resolve_spec("non_local_embedded_gaussian")), mode=mode, single_step=single_step)
    assert report.passed and report.rows and not report.unmatched_reference
    assert [r.layer for r in report.rows][-1] == ""  # the whole model last


@pytest.mark.parametrize("single_step", [False, True])
def test_planted_epsilon_is_reported_first_at_its_layer(monkeypatch, single_step):
    import paddle_impl.layers as paddle_layers

    original = paddle_layers.batch_norm

    def wrong_epsilon(dimension, channels):
        layer = original(dimension, channels)
        layer._epsilon = 1e-2
        return layer

    monkeypatch.setattr("paddle_impl.blocks.non_local.batch_norm", wrong_epsilon)
    report = diff_spec(load_spec(resolve_spec("non_local_embedded_gaussian")), mode="eval", single_step=single_step)
    assert report.first_output == "W.1"
    assert [r.layer for r in report.rows if not r.output.passed][0] == "W.1"
    assert all(r.output.passed for r in report.rows if r.layer in ("g", "theta", "phi", "W.0"))


def _user_models(paddle_factory):
    tmodel, pmodel = user_pair.build_torch().double(), paddle_factory()
    pmodel.to(dtype="float64")
    transfer_by_name_map("torch", tmodel, "paddle", pmodel, user_pair.NAME_MAP)
    return tmodel, pmodel


def test_user_pair_with_a_name_map_matches():
    tmodel, pmodel = _user_models(user_pair.build_paddle)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    report = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode="train")
    assert report.passed, [(r.layer, r.output.max_abs) for r in report.rows]
    assert {r.candidate for r in report.rows} >= {"body.conv_b", "body.norm_b", "classifier"}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_user_pair_defect_is_pinned_to_its_layer(mode):
    tmodel, pmodel = _user_models(user_pair.build_paddle_defect)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    accumulated = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode=mode)
    assert accumulated.first_output == "features.4"
    single = diff_models(("torch", tmodel), ("paddle", pmodel), x, user_pair.NAME_MAP, mode=mode, single_step=True)
    diverging = [r.layer for r in single.rows if not r.output.passed]
    # fed the reference's inputs, only the defective layer and the containers wrapping it differ
    assert diverging[0] == "features.4"
    assert "features.6" not in diverging and "features.7" not in diverging


def test_cli_diff_on_a_user_pair(tmp_path):
    name_map = tmp_path / "map.yaml"
    name_map.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    out = tmp_path / "diff.json"
    args = ["diff", "--torch-model", "tests.fixtures.user_pair:build_torch",
            "--paddle-model", "tests.fixtures.user_pair:build_paddle_defect", "--name-map", str(name_map),
            "--input-shape", "2,3,6,6", "--single-step", "--json", str(out)]
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 1, result.output
    assert "first output divergence: `features.4`" in result.output
    assert "body.norm_b" in result.output
    assert json.loads(out.read_text())["first_output"] == "features.4"


def test_cli_check_layers_prints_the_trace():
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--layers", "--direction", "torch2paddle",
                                          "--mode", "eval"])
    assert result.exit_code == 0, result.output
    assert "no layer diverges" in result.output and "W.0" in result.output


@pytest.mark.parametrize("args,message", [
    (["--torch-model", "tests.fixtures.user_pair:NAME_MAP", "--paddle-model", "tests.fixtures.user_pair:build_paddle",
      "--input-shape", "2,3,6,6"], "has no callable"),
    (["non_local_gaussian", "--torch-model", "tests.fixtures.user_pair:build_torch"], "not both"),
])
def test_cli_diff_user_errors_are_one_paragraph(args, message):
    result = CliRunner().invoke(cli.cli, ["diff", *args], standalone_mode=False)
    assert result.exception is not None and message in str(result.exception), result.exception


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_cli_refuses_tolerances_that_would_pass_anything(value):
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--atol", value])
    assert result.exit_code == 2 and "--atol" in result.output


def test_cli_json_to_an_unwritable_path_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(cli.cli, ["check", "non_local_gaussian", "--mode", "eval", "--direction",
                                          "torch2paddle", "--json", str(tmp_path / "file" / "r.json")],
                                standalone_mode=False)
    assert "cannot write it" in str(result.exception)


def test_cli_diff_input_the_models_cannot_take_is_a_user_error(tmp_path):
    name_map = tmp_path / "map.yaml"
    name_map.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    result = CliRunner().invoke(cli.cli, ["diff", "--torch-model", "tests.fixtures.user_pair:build_torch",
                                          "--paddle-model", "tests.fixtures.user_pair:build_paddle", "--name-map",
                                          str(name_map), "--input-shape", "2,3"], standalone_mode=False)
    assert "--input-shape 2,3: the models could not run" in str(result.exception), result.exception
