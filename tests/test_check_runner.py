"""The parallel check runner: same verdicts as the engine, input order kept, errors surfaced, quiet off a TTY."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import cli
from crossattn import check_runner
from crossattn.check import check_spec
from crossattn.check_runner import CheckJob, run_checks
from crossattn.errors import CrossattnError
from crossattn.spec import load_spec, resolve_spec
from crossattn.tolerances import tolerance_for

NAMES = ["se_default", "eca_default", "gct_l2"]


def _jobs(names, directions=("torch->paddle", "paddle->torch"), modes=("train", "eval")):
    tol = tolerance_for("float64")
    return [CheckJob(load_spec(resolve_spec(n)), directions, modes, tol, 0, "float64") for n in names]


def _summary(cases):
    return [(c.spec, c.direction, c.mode, c.passed, [(x.tensor, x.category) for x in c.comparisons]) for c in cases]


def test_parallel_run_matches_the_engine_in_input_order():
    results = run_checks(_jobs(NAMES), workers=2, show_progress=False)
    assert [r.name for r in results] == NAMES
    got = [case for r in results for case in r.cases]
    expected = [case for n in NAMES for case in check_spec(load_spec(resolve_spec(n)))]
    assert _summary(got) == _summary(expected)
    for a, b in zip(got, expected):  # same numbers: one thread per process changes no float64 verdict
        assert [c.passed for c in a.comparisons] == [c.passed for c in b.comparisons]
        np.testing.assert_allclose([c.max_abs for c in a.comparisons], [c.max_abs for c in b.comparisons],
                                   atol=1e-12)
    assert all(r.seconds > 0 for r in results)


def test_a_broken_twin_fails_through_the_runner(monkeypatch):
    """Verdicts come from the engine: a perturbed transfer fails in the runner as it does directly."""
    from crossattn.model_pair import ModelPair

    real = ModelPair.transfer

    def perturbed(self, state, *args, **kwargs):
        out, report = real(self, state, *args, **kwargs)
        if kwargs.get("complete", True):
            out = {k: v + 1e-3 if v.dtype.kind == "f" else v for k, v in out.items()}
        return out, report

    monkeypatch.setattr(ModelPair, "transfer", perturbed)
    results = run_checks(_jobs(["se_default"], ("torch->paddle",), ("eval",)), workers=1, show_progress=False)
    assert not any(c.passed for c in results[0].cases)


def test_a_crash_in_a_worker_names_the_spec_and_keeps_its_traceback():
    # a seed no generator takes: a crash in the worker's own code, not a mistake a forward reports
    jobs = _jobs(["eca_default"]) + [CheckJob(load_spec(resolve_spec("se_default")), ("torch->paddle",), ("eval",),
                                              tolerance_for("float64"), "not a seed", "float64")]
    with pytest.raises(RuntimeError, match=r"(?s)spec se_default.*Traceback"):
        run_checks(jobs, workers=2, show_progress=False)


def test_a_pool_refuses_a_spec_over_its_memory_bound_before_any_job_runs(monkeypatch):
    from crossattn.bounds import LIMIT_ENV, TooLarge

    ran = []
    monkeypatch.setattr(check_runner, "_run_reporting", lambda job: ran.append(job.name) or ("ok", None))
    big = dataclasses.replace(load_spec(resolve_spec("se_default")), input_shape=(64, 64, 256, 256))
    jobs = _jobs(["eca_default"]) + [CheckJob(big, ("torch->paddle",), ("eval",), tolerance_for("float64"), 0,
                                              "float64")]
    monkeypatch.setenv(LIMIT_ENV, "1G")
    with pytest.raises(TooLarge, match="input_shape"):
        run_checks(jobs, workers=2, show_progress=False)
    assert ran == []  # not even the small job: the bounds come first


def test_jobs_checked_by_the_pool_are_not_bounded_again(monkeypatch):
    import crossattn.bounds

    def refuse(*args, **kwargs):
        raise AssertionError("bound checked twice")

    job = dataclasses.replace(_jobs(["eca_default"], ("torch->paddle",), ("eval",))[0], bounded=True)
    monkeypatch.setattr(crossattn.bounds, "require_pair_fits", refuse)
    assert check_runner.run_job(job).cases[0].passed


def test_user_errors_travel_as_user_errors(monkeypatch):
    def refuse(job):
        raise CrossattnError("input_shape: expected 4 dimensions")

    monkeypatch.setattr(check_runner, "run_job", refuse)
    assert check_runner._run_reporting(_jobs(["eca_default"])[0]) == ("user", "input_shape: expected 4 dimensions")
    pool = check_runner._Pool(_jobs(["eca_default", "se_default"]), 2, check_runner._Progress(8, False))
    pool.finish(0, 0, "user", "input_shape: expected 4 dimensions")
    assert isinstance(pool.error, CrossattnError) and pool.take(0) is None  # no further job is handed out


def test_progress_only_on_a_terminal(monkeypatch):
    shown = []
    monkeypatch.setattr(check_runner, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(check_runner._Progress, "_ensure",
                        lambda self: shown.append(self.enabled) if self.enabled else None)
    run_checks(_jobs(["eca_default"], ("torch->paddle",), ("eval",)), workers=1)  # pytest's stderr: no TTY
    assert shown == []
    run_checks(_jobs(["eca_default"], ("torch->paddle",), ("eval",)), workers=1, show_progress=True)
    assert shown and all(shown)


def test_cli_check_takes_workers(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["crossattn", "check", "eca_default", "--workers", "1", "--mode", "eval"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    assert exit_info.value.code in (0, None)
    assert "3 passed, 0 failed" in capsys.readouterr().out  # 2 directions + the large input probe


def test_workers_started_early_serve_the_pool_and_are_stopped_after():
    started = check_runner.Workers(1)
    processes = [process for process, _ in started.started]
    results = run_checks(_jobs(NAMES, ("torch->paddle",), ("eval",)), workers=2, show_progress=False,
                         started=started)
    assert [r.name for r in results] == NAMES and all(c.passed for r in results for c in r.cases)
    assert started.started == [] and not any(p.is_alive() for p in processes)


def test_workers_started_for_a_run_that_never_comes_are_stopped():
    started = check_runner.Workers(1)
    processes = [process for process, _ in started.started]
    started.close()  # as the CLI does when a spec name turns out wrong
    assert not any(p.is_alive() for p in processes)


def test_an_early_worker_takes_no_job_past_a_refused_bound(monkeypatch):
    from crossattn.bounds import LIMIT_ENV, TooLarge

    big = dataclasses.replace(load_spec(resolve_spec("se_default")), input_shape=(64, 64, 256, 256))
    jobs = [CheckJob(big, ("torch->paddle",), ("eval",), tolerance_for("float64"), 0, "float64")] + _jobs(NAMES)
    monkeypatch.setenv(LIMIT_ENV, "1G")
    started = check_runner.Workers(1)
    processes = [process for process, _ in started.started]
    with pytest.raises(TooLarge, match="input_shape"):
        run_checks(jobs, workers=2, show_progress=False, started=started)
    assert not any(p.is_alive() for p in processes)
