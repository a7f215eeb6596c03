"""Injected faults: a diverging run, a full disk, bit flips in checkpoints, a killed run.

Each fault must end in a clear message and exit status, keep every good file, and
(where the run continues) finish exactly as an undisturbed run does.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from crossattn.errors import CrossattnError, TrainingDiverged
from crossattn.training import run_dir as runs
from crossattn.training import runner
from crossattn.training.config import load_train_config, resolve_train_config
from crossattn.training.metrics import read_jsonl

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

FRAMEWORKS = ("torch", "paddle")
#: subprocess tests: torch in the default suite, paddle (whose writer raises a plain OSError, tested in-process
#: below) in `make test-slow`
TORCH_FIRST = ("torch", pytest.param("paddle", marks=pytest.mark.slow))
ROOT = Path(__file__).resolve().parent.parent
TINY_SPEC = """type: resnet_ablation
input_shape: [2, 3, 8, 8]
options: {stem: cifar, widths: [4, 8], stage_blocks: [1, 1], attention_stage: 2}
"""
TINY_CONFIG = """optimizer: adam
lr: 0.01
epochs: 3
batch_size: 10
eval_batch_size: 50
image_size: 8
dataset: synthetic
synthetic_train: 40
synthetic_test: 20
log_every: 2
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("faults")
    (folder / "tiny.yaml").write_text(TINY_SPEC)
    (folder / "tiny_config.yaml").write_text(TINY_CONFIG)
    (folder / "diverging.yaml").write_text(TINY_CONFIG.replace("lr: 0.01", "lr: 1.0e+30"))
    return {"spec": folder / "tiny.yaml", "config": folder / "tiny_config.yaml",
            "diverging": folder / "diverging.yaml"}


@pytest.fixture(scope="module")
def config(files):
    return load_train_config(files["config"])


@pytest.fixture(scope="module")
def data(config):
    return runner.load_datasets(config)


def quiet(line: str) -> None:
    pass


def strict_json_lines(path: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON: a bare NaN token fails."""
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def cli_subprocess(args: list[str], prelude: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    """`crossattn ARGS` in a fresh interpreter (for faults that need a process of their own)."""
    code = textwrap.dedent(prelude) + "\nimport cli\ncli.main()\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


# --------------------------------------------------------------------------- 6: NaN guard


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_diverging_run_stops_at_the_first_nan_and_keeps_the_good_checkpoint(framework, files, config, data,
                                                                             tmp_path):
    run = tmp_path / "run"
    runner.train(files["spec"], config, framework, "cpu", run, log=quiet, stop_after=1, datasets=data)
    good = sorted((run / "checkpoints").iterdir())
    assert len(good) == 1
    good_bytes = good[0].read_bytes()
    # the same run continued with an absurd learning rate: it must stop in epoch 2, not save NaN weights
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("lr: 0.01", "lr: 1.0e+30"))
    with pytest.raises(TrainingDiverged) as caught:
        runner.resume_run(run, device="cpu", log=quiet, datasets=data)
    message = str(caught.value)
    assert "epoch 2/3, step" in message and "not finite" in message and good[0].name in message
    assert caught.value.exit_code == 3
    assert sorted((run / "checkpoints").iterdir()) == good and good[0].read_bytes() == good_bytes
    rows = strict_json_lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and all(np.isfinite(r["train_loss"]) for r in rows)


@pytest.mark.parametrize("framework", TORCH_FIRST)
def test_cli_names_epoch_and_step_of_the_first_nan(framework, files, tmp_path):
    run = tmp_path / "run"
    result = cli_subprocess(["train", "--spec", str(files["spec"]), "--config", str(files["diverging"]),
                             "--framework", framework, "--run-dir", str(run)])
    assert result.returncode == 3, result.stderr
    assert "error: training stopped at epoch 1/3, step 2/4: the loss is not finite" in result.stderr
    assert "Traceback" not in result.stderr and not run.exists()  # nothing trained, nothing left


def test_a_non_finite_gradient_stops_before_the_update(files, config, data, tmp_path, monkeypatch):
    import torch_impl.finite

    calls = []

    def third_step_bad(model):
        calls.append(1)
        return len(calls) != 3

    monkeypatch.setattr(torch_impl.finite, "grads_finite", third_step_bad)
    with pytest.raises(TrainingDiverged, match=r"epoch 1/3, step 3/4: a gradient is not finite"):
        runner.train(files["spec"], config, "torch", "cpu", tmp_path / "run", log=quiet, datasets=data)


def test_non_finite_metrics_are_written_as_null(tmp_path):
    from crossattn.training.metrics import write_metrics

    write_metrics(tmp_path, [{"epoch": 1, "val_loss": float("nan"), "train_loss": float("inf")}])
    assert strict_json_lines(tmp_path / "metrics.jsonl") == [{"epoch": 1, "val_loss": None, "train_loss": None}]


# --------------------------------------------------------------------------- 7: disk full


FILE_SIZE_LIMIT = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


@pytest.mark.parametrize("framework", TORCH_FIRST)
def test_a_full_disk_while_saving_is_a_clear_error_and_resume_recovers(framework, files, tmp_path):
    """The framework's own writer fails mid-file (a file-size limit stands in for a full disk)."""
    run = tmp_path / "run"
    train = ["train", "--spec", str(files["spec"]), "--config", str(files["config"]), "--framework", framework,
             "--run-dir", str(run)]
    limited = FILE_SIZE_LIMIT.format(limit=4096)  # the config and metrics fit, a checkpoint does not
    result = cli_subprocess(train, limited)
    assert result.returncode == 2, result.stderr
    assert "error: cannot write checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert "--resume" in result.stderr
    assert list((run / "checkpoints").iterdir()) == []  # no temp file, no partial checkpoint
    result = cli_subprocess(["train", "--resume", str(run)], limited)  # the disk is still full
    assert result.returncode == 2 and "error: cannot write checkpoint" in result.stderr, result.stderr
    resumed = runner.resume_run(run, device="cpu", log=quiet)  # space freed: the run completes
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]


@pytest.mark.parametrize("target", ["out.pt", pytest.param("out.pdparams", marks=pytest.mark.slow)])
def test_a_full_disk_while_converting_is_a_clear_error(target, tmp_path):
    source = tmp_path / "se.pt"
    from crossattn import registry
    from crossattn.spec import load_spec, resolve_spec

    torch.save(registry.build(load_spec(resolve_spec("se_default")), "torch").state_dict(), source)
    destination = tmp_path / target
    result = cli_subprocess(["convert", str(source), str(destination), "--spec", "se_default"],
                            FILE_SIZE_LIMIT.format(limit=512))
    assert result.returncode == 2, result.stderr
    assert "cannot write it" in result.stderr and "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["se.pt"]  # no temp file, no destination


def test_a_failed_write_keeps_the_older_checkpoints(files, config, data, tmp_path, monkeypatch):
    import paddle_impl.train

    run = tmp_path / "run"
    runner.train(files["spec"], config, "paddle", "cpu", run, log=quiet, stop_after=1, datasets=data)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    def full_disk(self, path, epoch, step):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paddle_impl.train.Trainer, "save", full_disk)
    with pytest.raises(CrossattnError, match=r"No space left on device.*older checkpoints \(epoch_0001.pdparams\)"):
        runner.resume_run(run, device="cpu", log=quiet, datasets=data)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


# --------------------------------------------------------------------------- 8: bit flips and kills


def _flip_in_tensor_data(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes (torch: a zip member's data)."""
    import struct
    import zipfile

    data = bytearray(path.read_bytes())
    if path.suffix == ".pt":
        with zipfile.ZipFile(path) as archive:
            member = max(archive.infolist(), key=lambda info: info.file_size)
        name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
        start = member.header_offset + 30 + name_len + extra_len
        where = start + member.file_size // 2
    else:
        where = len(data) // 2
    data[where] ^= 0x10
    path.write_bytes(bytes(data))


def _final_state(run: Path, framework: str) -> dict[str, np.ndarray]:
    from weight_transfer.checkpoints import read_checkpoint

    newest = sorted((run / "checkpoints").iterdir())[-1]
    content = read_checkpoint(newest).content["model"]
    return {k: np.asarray(v) for k, v in content.items()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_bit_flipped_newest_checkpoint_falls_back_and_the_run_ends_as_an_undisturbed_one(
        framework, files, config, data, tmp_path):
    whole = runner.train(files["spec"], config, framework, "cpu", tmp_path / "whole", log=quiet, datasets=data)
    run = tmp_path / "run"
    runner.train(files["spec"], config, framework, "cpu", run, log=quiet, stop_after=2, datasets=data)
    newest = sorted((run / "checkpoints").iterdir())[-1]
    _flip_in_tensor_data(newest)
    lines: list[str] = []
    resumed = runner.resume_run(run, device="cpu", log=lines.append, datasets=data)
    assert any("damaged" in line and newest.name in line for line in lines), lines
    assert any("resuming" in line and "after epoch 1" in line for line in lines), lines
    # the damaged file is kept aside, out of the rotation, which otherwise kept it as the newest and pruned good ones
    assert newest.with_name(newest.name + ".unreadable").is_file()
    for _, path in runs.list_checkpoints(run):
        runs.verify_checkpoint(path)
    assert [r["val_top1"] for r in resumed.rows] == [r["val_top1"] for r in whole.rows]
    expected, got = _final_state(tmp_path / "whole", framework), _final_state(run, framework)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_every_single_bit_flip_in_a_written_checkpoint_is_caught_or_harmless(tmp_path):
    """Sampled here (every 5th byte); `make test-fuzz` sweeps every byte of every format."""
    sweep_bit_flips(tmp_path, step=5)


@pytest.mark.slow
def test_every_byte_bit_flip_sweep(tmp_path):
    sweep_bit_flips(tmp_path, step=1)


def sweep_bit_flips(tmp_path: Path, step: int) -> dict[str, dict[str, int]]:
    from crossattn import registry
    from crossattn.spec import load_spec, resolve_spec
    from weight_transfer.checkpoints import CheckpointError, read_checkpoint
    from weight_transfer.integrity import DamagedCheckpoint
    from weight_transfer.checkpoints import write_checkpoint

    model = registry.build(load_spec(resolve_spec("se_default")), "torch")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    counts = {}
    for fmt, ext in (("torch", ".pt"), ("paddle", ".pdparams"), ("safetensors", ".safetensors"), ("npz", ".npz")):
        source = tmp_path / f"se{ext}"
        write_checkpoint(source, fmt, state, "torch", "se")
        original = source.read_bytes()
        counts[fmt] = tally = {"caught": 0, "harmless": 0}
        for i in range(0, len(original), step):
            damaged = bytearray(original)
            damaged[i] ^= 1 << (i % 8)
            path = tmp_path / f"flipped{ext}"
            path.write_bytes(bytes(damaged))
            try:
                content = read_checkpoint(path).content
            except (CheckpointError, DamagedCheckpoint):
                tally["caught"] += 1
                continue
            same = content.keys() == state.keys() and all(
                np.array_equal(np.asarray(content[k]), state[k]) and np.asarray(content[k]).dtype == state[k].dtype
                for k in state)
            assert same, f"{fmt}: a flip at byte {i} changed the tensors silently"
            tally["harmless"] += 1
    return counts


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_end(files, config, data, tmp_path):
    """SIGKILL while a checkpoint is written, then --resume: the same numbers as an undisturbed run.

    Both runs go through the command line in their own process, as a user's would (one thread
    setting for both: torch's CPU kernels may round differently with another).
    """
    whole = tmp_path / "whole"
    finished = cli_subprocess(["train", "--spec", str(files["spec"]), "--config", str(files["config"]),
                               "--framework", "torch", "--run-dir", str(whole)])
    assert finished.returncode == 0, finished.stderr
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        import torch_impl.train as t
        original = t.Trainer.save
        def slow_save(self, path, epoch, step):
            original(self, path, epoch, step)
            if epoch >= 2:
                time.sleep(60)  # killed here, while epoch 2's checkpoint is being written
        t.Trainer.save = slow_save
        sys.argv[1:] = ["train", "--spec", {str(files['spec'])!r}, "--config", {str(files['config'])!r},
                        "--framework", "torch", "--run-dir", {str(run)!r}]
        import cli
        cli.main()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not list((run / "checkpoints").glob(".epoch_0002.pt.*")) \
                and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "epoch_0001.pt" in left and "epoch_0002.pt" not in left, left  # epoch 2 never got its name
    resumed = cli_subprocess(["train", "--resume", str(run)])
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert [r["val_top1"] for r in read_jsonl(run / "metrics.jsonl")] == \
        [r["val_top1"] for r in read_jsonl(whole / "metrics.jsonl")]
    expected, got = _final_state(whole, "torch"), _final_state(run, "torch")
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_resume_of_a_finished_run_says_so(files, config, data, tmp_path):
    run = tmp_path / "run"
    runner.train(files["spec"], config, "torch", "cpu", run, log=quiet, datasets=data)
    lines: list[str] = []
    result = runner.resume_run(run, device="cpu", log=lines.append, datasets=data)
    assert any("has finished its 3 epochs" in line and "--epochs" in line for line in lines), lines
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]


def test_a_failed_fresh_run_in_a_folder_that_was_there_removes_only_what_it_wrote(files, config, data, tmp_path,
                                                                                 monkeypatch):
    """The failed run's clean-up removed the whole folder, with the user's own file beside it."""
    import torch_impl.finite

    monkeypatch.setattr(torch_impl.finite, "grads_finite", lambda model: False)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(TrainingDiverged):
        runner.train(files["spec"], config, "torch", "cpu", run, log=quiet, datasets=data)
    assert run.is_dir() and list(run.iterdir()) == []  # the folder stays; what the run wrote is gone


@pytest.mark.parametrize("planted", ["checkpoints/best_model.pth", "spec.yaml", "config.yaml"])
def test_a_folder_holding_someone_elses_files_under_the_runs_names_is_refused(files, config, data, tmp_path,
                                                                              planted):
    """A `checkpoints` folder of the user's weights, or a spec.yaml of theirs, passed the check: the run then
    overwrote the spec, and its failure removed the folder with the weights in it."""
    run = tmp_path / "run"
    (run / planted).parent.mkdir(parents=True, exist_ok=True)
    (run / planted).write_text("mine")
    with pytest.raises(CrossattnError, match="holds files crossattn did not write"):
        runner.train(files["spec"], config, "torch", "cpu", run, log=quiet, datasets=data)
    assert (run / planted).read_text() == "mine"


@pytest.mark.parametrize("damage, words", [
    ('{"framework": "torch",', "cannot read the run's record"),
    ("[]", "holds a list, not the JSON object"),
])
def test_a_damaged_run_record_is_named(files, config, data, tmp_path, damage, words):
    run = tmp_path / "run"
    runner.train(files["spec"], config, "torch", "cpu", run, log=quiet, stop_after=1, datasets=data)
    (run / "run.json").write_text(damage)
    with pytest.raises(CrossattnError, match=re.escape(words)):
        runner.resume_run(run, device="cpu", log=quiet, datasets=data)


def test_damaged_metrics_are_named_and_change_nothing(files, config, data, tmp_path):
    """The resume rewrote config.yaml and run.json before reading metrics.jsonl, then died in a traceback."""
    run = tmp_path / "run"
    runner.train(files["spec"], config, "torch", "cpu", run, log=quiet, stop_after=1, datasets=data)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()[:40])
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "run.json")}
    with pytest.raises(CrossattnError, match=r"metrics.jsonl, line 1: not a JSON row"):
        runner.resume_run(run, device="cpu", epochs=5, log=quiet, datasets=data)
    assert {name: (run / name).read_bytes() for name in before} == before
