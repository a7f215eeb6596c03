"""`crossattn bench`: the JSON schema, the table, the chart and the refusals (no timed assertions)."""

from __future__ import annotations

import json
import sys

import pytest

import cli
from crossattn import bench
from crossattn.bench import BenchJob, BenchRow, Measurement, Timing, input_shape_for, parse_size
from crossattn.errors import CrossattnError


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["crossattn", "bench", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One real run: a small block in both frameworks, one warm-up and two timed calls each."""
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    try:
        code = run_cli(mp, "se_default", "--repeat", "2", "--warmup", "1", "--batch", "3", "--json",
                       str(out / "b.json"), "--plot", str(out / "b.png"))
    finally:
        mp.undo()
    assert code == 0
    return json.loads((out / "b.json").read_text()), out


def test_json_schema(report):
    data, _ = report
    assert data["schema"] == bench.SCHEMA
    assert {"machine", "settings", "rows"} <= set(data)
    assert data["machine"]["cores"] >= 1 and "torch" in data["machine"]["versions"]
    assert data["settings"]["repeat"] == 2 and data["settings"]["dtype"] == "float32"
    (row,) = data["rows"]
    assert row["name"] == "se_default" and row["input_shape"][0] == 3
    assert set(row["frameworks"]) == {"torch", "paddle"}
    for fw, m in row["frameworks"].items():
        assert m["framework"] == fw and m["peak_kind"] == "process RSS"
        for what in ("forward", "forward_backward"):
            timing = m[what]
            assert len(timing["samples_s"]) == 2
            assert 0 < timing["min_s"] <= timing["median_s"] <= timing["max_s"]
        assert m["peak_bytes"] >= m["rss_before_bytes"] > 0
        assert m["parameters"] == row["parameters"] > 0
    ratios = row["ratio_paddle_over_torch"]
    expected = (row["frameworks"]["paddle"]["forward_backward"]["median_s"]
                / row["frameworks"]["torch"]["forward_backward"]["median_s"])
    assert ratios["forward_backward"] == pytest.approx(expected)
    assert row["flops"] > 0  # counted on the torch twin


def test_plot_is_a_png(report):
    _, out = report
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_to_stdout_prints_nothing_else(monkeypatch, capsys):
    assert run_cli(monkeypatch, "eca_default", "--framework", "torch", "--repeat", "1", "--warmup", "0",
                   "--json", "-") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["rows"][0]["frameworks"]) == {"torch"}
    assert data["rows"][0]["ratio_paddle_over_torch"]["forward"] is None


def _row(torch_s, paddle_s):
    def m(fw, s):
        return Measurement(fw, "cpu", Timing([s, s * 2, s * 3]), Timing([s]), 10, 2e9, 2**20, "process RSS",
                           2**19, 0.1)
    return BenchRow("x", (2, 3, 8, 8), "float32", "cpu", {"torch": m("torch", torch_s), "paddle": m("paddle", paddle_s)})


def test_table_has_one_line_per_model_with_the_ratio():
    text = bench.table([_row(0.01, 0.03), _row(0.02, 0.02)])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|")
    assert "| 3.00 |" in lines[2] and "| 1.00 |" in lines[3]
    assert "20.0 (10.0-30.0)" in lines[2]  # median (min-max) ms of the torch forward


def test_sizes_and_shapes():
    assert parse_size("64x48") == (64, 48) and parse_size("32") == (32, 32) and parse_size("8x16x16") == (8, 16, 16)
    assert input_shape_for((2, 3, 32, 32), 8, (64, 48), "m") == (8, 3, 64, 48)
    assert input_shape_for((2, 1, 30, 25, 25), None, (13, 13), "m") == (2, 1, 30, 13, 13)
    for bad in ("64x", "axb", "0x4"):
        with pytest.raises(CrossattnError, match="--size"):
            parse_size(bad)
    with pytest.raises(CrossattnError, match="spatial"):
        input_shape_for((2, 3, 32), None, (4, 4), "m")
    with pytest.raises(CrossattnError, match="input shape"):
        input_shape_for(None, None, None, "m")


def test_job_round_trips_through_json():
    job = BenchJob("m", {"spec": "/x.yaml"}, "torch", "cpu", "float32", (2, 3, 4, 4), 3, 1, 2)
    assert BenchJob.from_json(json.loads(json.dumps(job.to_json()))) == job


def test_user_mistakes_are_one_line_errors(monkeypatch, capsys):
    assert run_cli(monkeypatch) == 2
    assert "needs a spec" in capsys.readouterr().err
    assert run_cli(monkeypatch, "se_default", "--torch-model", "m:f") == 2
    assert "not both" in capsys.readouterr().err
    assert run_cli(monkeypatch, "se_default", "--size", "big") == 2
    err = capsys.readouterr().err
    assert "--size" in err and "Traceback" not in err
    assert run_cli(monkeypatch, "se_defualt") == 2
    assert "se_default" in capsys.readouterr().err  # did you mean


def test_a_users_pair_is_benched_through_its_factories(monkeypatch, capsys):
    fixture = "tests.fixtures.user_pair"
    assert run_cli(monkeypatch, "--torch-model", f"{fixture}:build_torch", "--paddle-model",
                   f"{fixture}:build_paddle", "--input-shape", "2,3,6,6", "--repeat", "1", "--warmup", "0",
                   "--json", "-") == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["input_shape"] == [2, 3, 6, 6] and set(row["frameworks"]) == {"torch", "paddle"}
    assert row["frameworks"]["torch"]["parameters"] == row["frameworks"]["paddle"]["parameters"] > 0
