"""Twin training loops on synthetic data: learning, resume, identical starts, schedules, configs, ablation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from crossattn.errors import CrossattnError, OptionError, SpecError
from crossattn.spec import resolve_spec, load_spec
from crossattn.training import runner
from crossattn.training.ablation import load_ablation
from crossattn.training.augment import apply_numpy, crop_flip
from crossattn.training.config import load_train_config, resolve_train_config
from crossattn.training.metrics import read_jsonl, topk_correct
from crossattn.training.schedule import lr_table

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

TINY_SPEC = """# tiny resnet_ablation for tests
type: resnet_ablation
input_shape: [2, 3, 16, 16]
options:
  stem: cifar
  widths: [8, 16]
  stage_blocks: [1, 1]
  attention_stage: 2
"""
TINY_NL_SPEC = TINY_SPEC.replace("  attention_stage: 2\n", """  attention_stage: 2
  attention:
    type: non_local
    options:
      mode: dot_product
      reduction: 2
      sub_sample: false
""")
FRAMEWORKS = ("torch", "paddle")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores shared with other processes: one intra-op thread keeps torch's timing stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("train_specs")
    (folder / "tiny.yaml").write_text(TINY_SPEC)
    (folder / "tiny_nl.yaml").write_text(TINY_NL_SPEC)
    return {"tiny": folder / "tiny.yaml", "tiny_nl": folder / "tiny_nl.yaml", "dir": folder}


@pytest.fixture(scope="module")
def config():
    return load_train_config(resolve_train_config("fast_cpu"))


@pytest.fixture(scope="module")
def data(config):
    return runner.load_datasets(config)


@pytest.fixture(scope="module")
def full_runs(files, config, data, tmp_path_factory) -> dict[str, runner.RunResult]:
    """One uninterrupted 3-epoch run per framework."""
    out = tmp_path_factory.mktemp("full")
    return {fw: runner.train(files["tiny"], config, fw, "cpu", out / fw, log=lambda s: None, datasets=data)
            for fw in FRAMEWORKS}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_framework_learns(full_runs, framework):
    rows = full_runs[framework].rows
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_top1"] > 0.5, rows  # chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    run_dir = full_runs[framework].run_dir
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3
    assert (run_dir / "metrics.csv").read_text().count("\n") == 4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "spec.yaml").is_file()
    suffix = {"torch": ".pt", "paddle": ".pdparams"}[framework]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"epoch_0002{suffix}", f"epoch_0003{suffix}"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_training_checkpoint_converts_to_the_other_framework(full_runs, framework, tmp_path):
    """Train in one framework, continue in the other: the run's checkpoint converts as it is, safely."""
    from click.testing import CliRunner

    import cli

    run_dir = full_runs[framework].run_dir
    source = sorted((run_dir / "checkpoints").iterdir())[-1]
    target = tmp_path / ("weights.pdparams" if framework == "torch" else "weights.pt")
    result = CliRunner().invoke(cli.cli, ["convert", str(source), str(target), "--spec", str(run_dir / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert "model" in result.output and "PASS" in result.output
    assert target.is_file()


def test_frameworks_train_alike(full_runs):
    """Same weights, batches and learning rates: the first epoch's mean training loss agrees closely."""
    t, p = full_runs["torch"].rows[0], full_runs["paddle"].rows[0]
    assert abs(t["train_loss"] - p["train_loss"]) < 1e-3 * abs(t["train_loss"])
    assert full_runs["torch"].info["parameters"] == full_runs["paddle"].info["parameters"]
    assert full_runs["torch"].info["macs_per_image"] == full_runs["paddle"].info["macs_per_image"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resume_reproduces_uninterrupted_run(full_runs, files, config, data, tmp_path, framework):
    run_dir = tmp_path / "run"
    first = runner.train(files["tiny"], config, framework, "cpu", run_dir, log=lambda s: None, stop_after=2,
                         datasets=data)
    assert [r["epoch"] for r in first.rows] == [1, 2]
    resumed = runner.resume_run(run_dir, device="cpu", log=lambda s: None, datasets=data)
    full = full_runs[framework]
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]
    for got, want in zip(resumed.rows, full.rows):
        for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), (key, got, want)
    got_state, want_state = resumed.trainer.state(), full.trainer.state()
    for key, value in want_state.items():
        np.testing.assert_allclose(got_state[key], value, atol=1e-6, err_msg=key)


def test_resume_through_cli(files, tmp_path):
    run_dir = tmp_path / "cli_run"
    cli = CliRunner()
    from crossattn.cli_train import train_command

    result = cli.invoke(train_command, ["--spec", str(files["tiny"]), "--config", "fast_cpu", "--framework",
                                        "paddle", "--device", "cpu", "--run-dir", str(run_dir), "--epochs", "2",
                                        "--stop-after", "1"])
    assert result.exit_code == 0, result.output
    assert "img/s" in result.output and "ETA" in result.output
    result = cli.invoke(train_command, ["--resume", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    again = cli.invoke(train_command, ["--spec", str(files["tiny"]), "--config", "fast_cpu", "--framework",
                                       "paddle", "--run-dir", str(run_dir)])
    assert isinstance(again.exception, CrossattnError) and "--resume" in str(again.exception)


def test_identical_initial_weights(files):
    from torch_impl import adapter as torch_adapter
    from torch_impl.train import build_model as build_torch
    from paddle_impl import adapter as paddle_adapter
    from paddle_impl.train import build_model as build_paddle
    from weight_transfer import transfer

    spec = load_spec(files["tiny_nl"])
    torch_model = build_torch(spec, seed=7)
    with paddle.utils.unique_name.guard():
        paddle_model = build_paddle(spec, seed=7)
    moved, _ = transfer(torch_adapter.state(torch_model), "torch", paddle_adapter.slots(paddle_model), "paddle")
    paddle_state = paddle_adapter.state(paddle_model)
    assert moved.keys() == paddle_state.keys()
    for key, value in paddle_state.items():
        np.testing.assert_array_equal(moved[key], value, err_msg=key)


def test_lr_schedule_same_per_step(config):
    from paddle_impl.train import make_optimizer as paddle_optimizer, set_lr as paddle_set_lr
    from torch_impl.train import make_optimizer as torch_optimizer, set_lr as torch_set_lr

    cfg = config.replace(schedule="cosine", warmup_epochs=1, epochs=4, lr=0.1, min_lr=0.001)
    table = lr_table(cfg, steps_per_epoch=5)
    assert table[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert table[5] == pytest.approx(0.1) and table[-1] == pytest.approx(0.001)
    assert np.all(np.diff(table[5:]) <= 0)
    stepped = lr_table(cfg.replace(schedule="step", warmup_epochs=0, step_epochs=2, step_gamma=0.5), 5)
    assert stepped.tolist() == [0.1] * 10 + [0.05] * 10
    t_opt = torch_optimizer(torch.nn.Linear(2, 2), cfg)
    p_opt = paddle_optimizer(paddle.nn.Linear(2, 2), cfg)
    for lr in table:
        torch_set_lr(t_opt, float(lr))
        paddle_set_lr(p_opt, float(lr))
        assert t_opt.param_groups[0]["lr"] == p_opt.get_lr() == float(lr)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_batch_pipeline_matches_numpy(files, config, data, framework):
    """gather -> float -> crop/flip -> normalise on the device equals the numpy reference."""
    cfg = config.replace(augment=True, crop_padding=3, image_size=None, mean=(100.0, 120.0, 140.0),
                         std=(50.0, 60.0, 70.0))
    module = runner.twin(framework)
    with module.session():
        trainer = module.Trainer(load_spec(files["tiny"]), cfg, "cpu", *data)
    indices = np.array([5, 0, 17, 3, 9, 12])
    aug = crop_flip(len(indices), 32, 32, 3, True, seed=1, epoch=2, batch=4)
    assert aug.flipped.any() and not aug.flipped.all()
    got = trainer.batch(trainer.train_images, indices, aug).numpy()
    mean = np.array(cfg.mean)[None, :, None, None]
    std = np.array(cfg.std)[None, :, None, None]
    want = (apply_numpy(data[0].images[indices].astype(np.float32), aug) - mean) / std
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_bilinear_resize_twins_agree(files, config, data):
    """paddle's interpolate with align_mode=0 follows torch's half-pixel rule (align_mode=1 would not)."""
    cfg = config.replace(image_size=96)
    out = {}
    for fw in FRAMEWORKS:
        module = runner.twin(fw)
        with module.session():
            trainer = module.Trainer(load_spec(files["tiny"]), cfg, "cpu", *data)
        out[fw] = trainer.batch(trainer.train_images, np.arange(4), None).numpy()
    assert out["torch"].shape == (4, 3, 96, 96)
    np.testing.assert_allclose(out["paddle"], out["torch"], atol=1e-5)


def test_topk_ties_and_counts():
    logits = np.array([[0.0, 2.0, 2.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    assert topk_correct(logits, np.array([1, 0]), (1, 5)) == {1: 2, 5: 2}
    assert topk_correct(logits, np.array([2, 3]), (1, 2)) == {1: 0, 2: 1}


def test_config_errors_name_key_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# bad\noptimizer: adam\nlr: fast\nepochs: 3\n")
    with pytest.raises(SpecError) as err:
        load_train_config(bad)
    assert err.value.key == "lr" and err.value.line == 3 and "a number" in err.value.message
    bad.write_text("optimizer: adam\nepochs: 3\nmomentun: 0.9\n")
    with pytest.raises(SpecError) as err:
        load_train_config(bad)
    assert err.value.key == "momentun" and err.value.line == 3 and "known options" in err.value.message
    bad.write_text("dataset: mnist\nmean: [1.0, 2.0, 3.0]\nstd: [1.0, 1.0, 1.0]\n")
    with pytest.raises(SpecError) as err:
        load_train_config(bad)
    assert err.value.key == "mean" and err.value.line == 2
    bad.write_text("optimizer: adam\nnesterov: true\n")
    with pytest.raises(SpecError, match="nesterov"):
        load_train_config(bad)


def test_shipped_configs_and_ablation_load():
    seed = load_train_config(resolve_train_config("seed004"))
    assert (seed.optimizer, seed.lr, seed.batch_size, seed.image_size, seed.epochs) == ("adam", 1e-4, 32, 96, 30)
    assert seed.channel_mean() == (127.5,) * 3 and seed.adam_epsilon == 1e-8 and not seed.augment
    ablation = load_ablation(Path(__file__).resolve().parent.parent / "crossattn/specs/ablations/seed004.yaml")
    assert ablation.baseline.stem == "resnet18_baseline" and len(ablation.variants) == 5


def test_fp16_refused_on_cpu(files, config, data):
    module = runner.twin("torch")
    with pytest.raises(CrossattnError, match="fp16 needs a GPU"):
        module.Trainer(load_spec(files["tiny"]), config.replace(amp="fp16"), "cpu", *data)


def test_ablation_writes_table(files, tmp_path, monkeypatch):
    ablation = tmp_path / "tiny_ablation.yaml"
    ablation.write_text(f"# tiny\nname: tiny\nconfig: fast_cpu\nbaseline: {files['tiny']}\n"
                        f"variants:\n  - {files['tiny_nl']}\n")
    from crossattn.cli_train import ablation_command

    out = tmp_path / "out"
    result = CliRunner().invoke(ablation_command, [str(ablation), "--framework", "torch", "--epochs", "1",
                                                   "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "ablation.md").read_text()
    assert "| tiny | baseline | torch |" in table and "| tiny_nl | variant | torch |" in table
    csv_lines = (out / "ablation.csv").read_text().splitlines()
    assert csv_lines[0].startswith("spec,role,framework,parameters,mmacs") and len(csv_lines) == 3
    png = (out / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000  # the test extra installs matplotlib
    # a second invocation reads the finished runs back; --devices without GPUs falls back to sequential
    import torch_impl.train as torch_train

    def no_gpu(device):
        raise CrossattnError("no GPU here")

    monkeypatch.setattr(torch_train, "resolve_device", no_gpu)  # holds on machines that do have one
    again = CliRunner().invoke(ablation_command, [str(ablation), "--framework", "torch", "--epochs", "1",
                                                  "--devices", "0", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "already trained" in again.output and "no GPU is visible" in again.output


def test_ablation_without_matplotlib_says_how_to_get_the_plot(files, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    ablation = tmp_path / "tiny_ablation.yaml"
    ablation.write_text(f"name: tiny\nconfig: fast_cpu\nbaseline: {files['tiny']}\nvariants:\n  - {files['tiny_nl']}\n")
    from crossattn.cli_train import ablation_command

    out = tmp_path / "out"
    result = CliRunner().invoke(ablation_command, [str(ablation), "--framework", "torch", "--epochs", "1",
                                                   "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pip install 'crossattn[plot]'" in result.output
    assert (out / "ablation.md").is_file() and not (out / "ablation.png").exists()


def test_augmented_smoothed_training_agrees(files, config, data, tmp_path):
    """Crop/flip, label smoothing, a warmup+cosine schedule and torch's channels_last, in both loops."""
    cfg = config.replace(epochs=2, augment=True, crop_padding=2, label_smoothing=0.1, schedule="cosine",
                         warmup_epochs=1, channels_last=True)
    rows = {fw: runner.train(files["tiny"], cfg, fw, "cpu", tmp_path / fw, log=lambda s: None, stop_after=1,
                             datasets=data).rows[0] for fw in FRAMEWORKS}
    assert abs(rows["torch"]["train_loss"] - rows["paddle"]["train_loss"]) < 1e-3 * rows["torch"]["train_loss"]
    assert rows["torch"]["lr"] == rows["paddle"]["lr"] == pytest.approx(cfg.lr)
    info = json.loads((tmp_path / "paddle" / "run.json").read_text())
    assert "ignored" in info["channels_last"]


@pytest.mark.parametrize("optimizer", [
    {"optimizer": "adam"},
    {"optimizer": "adamw", "weight_decay": 5e-4},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 5e-3},
])
def test_float64_training_runs_agree_step_by_step(files, config, data, tmp_path, optimizer):
    """Same weights, batches, augmentation, resize, schedule and optimizer: after 40 steps in float64
    every trained weight agrees to rounding. (The spec has no conv bias before BatchNorm: such a bias
    has a zero gradient in exact arithmetic, and Adam would step on the rounding noise.)"""
    from crossattn.frameworks import adapter
    from crossattn.tolerances import FLOAT64
    from weight_transfer import transfer

    spec = tmp_path / "tiny_no_bias.yaml"
    spec.write_text(TINY_SPEC.replace("  stem: cifar\n", "  stem: cifar\n  conv_bias: false\n"))
    cfg = config.replace(dtype="float64", epochs=2, augment=True, crop_padding=2, label_smoothing=0.1,
                         schedule="cosine", **optimizer)
    runs = {fw: runner.train(spec, cfg, fw, "cpu", tmp_path / fw, log=lambda s: None, datasets=data)
            for fw in FRAMEWORKS}
    for t_row, p_row in zip(runs["torch"].rows, runs["paddle"].rows):
        for key in ("train_loss", "val_loss"):  # evaluation agrees too: one running-statistics rule
            assert p_row[key] == pytest.approx(t_row[key], rel=FLOAT64.rtol), (key, t_row, p_row)
        assert (p_row["train_top1"], p_row["val_top1"], p_row["val_top5"]) == \
            (t_row["train_top1"], t_row["val_top1"], t_row["val_top5"])
    torch_state = runs["torch"].trainer.state()
    slots = adapter("torch").slots(runs["torch"].trainer.model)
    paddle_state, _ = transfer(runs["paddle"].trainer.state(), "paddle", slots, "torch", complete=False)
    for key, slot in slots.items():
        if slot.trainable:
            error = np.linalg.norm(paddle_state[key] - torch_state[key]) / np.linalg.norm(torch_state[key])
            assert error <= FLOAT64.rtol, (key, error)


@pytest.mark.parametrize("rule", ["torch", "paddle", "native"])
def test_bn_stats_rule_applies_to_both_twins(rule):
    """Three train-mode calls of the BatchNorm twins: under a shared rule the running statistics agree to
    rounding and follow that rule's formula; under `native` each framework keeps its own."""
    from crossattn.conventions import replay_running_stats
    from paddle_impl.layers import apply_bn_stats as paddle_apply, batch_norm as paddle_bn
    from torch_impl.layers import apply_bn_stats as torch_apply, batch_norm as torch_bn

    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)) * 2 + 1  # 16 values per channel
    t_bn, p_bn = torch_apply(torch_bn(2, 3).double(), rule), paddle_apply(paddle_bn(2, 3), rule)
    p_bn.to(dtype="float64")
    t_bn.train(), p_bn.train()
    for _ in range(3):
        t_out, p_out = t_bn(torch.from_numpy(x)), p_bn(paddle.to_tensor(x))
    np.testing.assert_allclose(p_out.numpy(), t_out.detach().numpy(), atol=1e-12)
    calls = [(x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), 16)] * 3
    for fw, (mean, var) in {"torch": (t_bn.running_mean.numpy(), t_bn.running_var.numpy()),
                            "paddle": (p_bn._mean.numpy(), p_bn._variance.numpy())}.items():
        want = replay_running_stats(np.zeros(3), np.ones(3), calls, fw if rule == "native" else rule)
        np.testing.assert_allclose(mean, want[0], rtol=1e-14, err_msg=f"{fw} mean")
        np.testing.assert_allclose(var, want[1], rtol=1e-14, err_msg=f"{fw} var")
    assert int(t_bn.num_batches_tracked) == 3
    gap = np.abs(t_bn.running_var.numpy() - p_bn._variance.numpy()).max()
    assert (gap > 1e-3) if rule == "native" else (gap < 1e-14), gap


def test_evaluation_agrees_only_under_a_shared_rule(files, config, data, tmp_path):
    """The measured cause of the val-metric gap: with each framework's own rule the float64 runs agree in
    training loss but not in validation loss; with the default shared rule they agree in both."""
    spec = tmp_path / "tiny_no_bias.yaml"
    spec.write_text(TINY_SPEC.replace("  stem: cifar\n", "  stem: cifar\n  conv_bias: false\n"))
    gaps = {}
    for rule in ("native", "torch"):
        cfg = config.replace(dtype="float64", epochs=1, bn_stats=rule)
        rows = [runner.train(spec, cfg, fw, "cpu", tmp_path / f"{rule}-{fw}", log=lambda s: None,
                             datasets=data).rows[0] for fw in FRAMEWORKS]
        gaps[rule] = {k: abs(rows[0][k] - rows[1][k]) / abs(rows[0][k]) for k in ("train_loss", "val_loss")}
    assert gaps["native"]["train_loss"] < 1e-9 < 1e-4 < gaps["native"]["val_loss"], gaps
    assert gaps["torch"]["train_loss"] < 1e-9 and gaps["torch"]["val_loss"] < 1e-9, gaps


def test_float64_training_refuses_mixed_precision():
    with pytest.raises(OptionError, match="amp"):
        load_train_config(resolve_train_config("fast_cpu")).replace(dtype="float64", amp="bf16")


def _ablation_file(tmp_path, baseline, variants, config="fast_cpu"):
    path = tmp_path / "ablation.yaml"
    path.write_text(f"name: t\nconfig: {config}\nbaseline: {baseline}\nvariants:\n"
                    + "".join(f"  - {v}\n" for v in variants))
    return path


def test_ablation_refuses_two_specs_with_one_file_name(files, tmp_path):
    from crossattn.training.ablation import load_ablation

    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny.yaml").write_text(TINY_NL_SPEC)
    with pytest.raises(SpecError, match="same file name") as info:
        load_ablation(_ablation_file(tmp_path, files["tiny"], [other / "tiny.yaml"]))
    assert info.value.key == "variants[0]"


def test_ablation_refuses_to_mix_recipes(files, tmp_path):
    from crossattn.training.ablation import run_ablation

    ablation = _ablation_file(tmp_path, files["tiny"], [files["tiny_nl"]])
    out = tmp_path / "out"
    run_ablation(ablation, "torch", out, epochs=1, device="cpu", log=lambda s: None)
    changed = tmp_path / "changed.yaml"
    changed.write_text(resolve_train_config("fast_cpu").read_text().replace("lr: 0.01", "lr: 0.3"))
    with pytest.raises(CrossattnError, match="different recipe .*lr"):
        run_ablation(_ablation_file(tmp_path, files["tiny"], [files["tiny_nl"]], changed), "torch", out, epochs=1,
                     device="cpu", log=lambda s: None)


def test_an_ablation_whose_config_leaves_bn_stats_out_runs_again(files, tmp_path):
    """The run records the BatchNorm rule it resolved; the recipe check compared it with the config's blank and
    refused the folder the ablation had written itself, advising to delete it."""
    from crossattn.training.ablation import run_ablation

    config = tmp_path / "no_bn_stats.yaml"
    config.write_text("\n".join(line for line in resolve_train_config("fast_cpu").read_text().splitlines()
                                if not line.startswith("bn_stats")) + "\n")
    ablation = _ablation_file(tmp_path, files["tiny"], [files["tiny_nl"]], config)
    out = tmp_path / "out"
    for _ in range(2):
        run_ablation(ablation, "torch", out, epochs=1, device="cpu", log=lambda s: None)


def test_resume_skips_a_damaged_newest_checkpoint(files, config, data, tmp_path):
    run = tmp_path / "run"
    runner.train(files["tiny"], config, "torch", "cpu", run, log=lambda s: None, stop_after=2, datasets=data)
    newest = sorted((run / "checkpoints").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a crash
    lines = []
    result = runner.resume_run(run, device="cpu", log=lines.append, datasets=data)
    assert any("cannot read checkpoint" in line for line in lines)
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]  # resumed after epoch 1, then trained 2 and 3


def test_resume_cannot_lower_the_total_epochs(files, config, data, tmp_path):
    run = tmp_path / "run"
    runner.train(files["tiny"], config, "torch", "cpu", run, log=lambda s: None, stop_after=2, datasets=data)
    with pytest.raises(CrossattnError, match="can only raise it"):
        runner.resume_run(run, device="cpu", epochs=1, log=lambda s: None, datasets=data)


@pytest.mark.parametrize("change,message", [
    ("  stem: cifar\n  in_channels: 1\n", "options.in_channels"),
    ("  stem: cifar\n  num_classes: 5\n", "options.num_classes"),
])
def test_train_refuses_a_model_that_does_not_fit_the_data(config, tmp_path, change, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY_SPEC.replace("  stem: cifar\n", change).replace("input_shape: [2, 3, 16, 16]\n", ""))
    with pytest.raises(CrossattnError, match=message):
        runner.train(spec, config, "torch", "cpu", tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_block_spec(config, tmp_path):
    with pytest.raises(CrossattnError, match="image classifiers"):
        runner.train(resolve_spec("se_default"), config, "torch", "cpu", tmp_path / "run", log=lambda s: None)


def test_train_keeps_out_of_a_folder_with_other_files(files, config, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CrossattnError, match="did not write"):
        runner.train(files["tiny"], config, "torch", "cpu", folder, log=lambda s: None)
    assert (folder / "notes.txt").read_text() == "mine" and len(list(folder.iterdir())) == 1


def test_cli_override_errors_name_the_flag(files, tmp_path):
    from crossattn.cli_train import train_command

    result = CliRunner().invoke(train_command, ["--spec", str(files["tiny"]), "--config", "seed004", "--framework",
                                                "torch", "--run-dir", str(tmp_path / "r"), "--dataset", "mnist"],
                                standalone_mode=False)
    assert isinstance(result.exception, CrossattnError)
    assert "--dataset mnist" in str(result.exception) and "seed004.yaml" in str(result.exception)


def test_ablation_dataset_override_reaches_every_run(files, tmp_path):
    from crossattn.cli_train import ablation_command

    cifar_config = tmp_path / "cifar.yaml"
    cifar_config.write_text(resolve_train_config("fast_cpu").read_text().replace("dataset: synthetic",
                                                                                 "dataset: cifar10"))
    ablation = _ablation_file(tmp_path, files["tiny"], [files["tiny_nl"]], cifar_config)
    result = CliRunner().invoke(ablation_command, [str(ablation), "--epochs", "1", "--device", "cpu", "--out",
                                                   str(tmp_path / "out"), "--dataset", "synthetic"])
    assert result.exit_code == 0, result.output
    assert "dataset: synthetic" in (tmp_path / "out" / "config.yaml").read_text()


def test_missing_data_creates_no_run_directory(files, config, tmp_path):
    cfg = config.replace(dataset="cifar10", data_dir=str(tmp_path / "no_data"))
    with pytest.raises(CrossattnError, match="--data-dir"):
        runner.train(files["tiny"], cfg, "torch", "cpu", tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_resume_names_the_spec_and_says_when_there_is_nothing_left(files, config, data, tmp_path):
    run = tmp_path / "run"
    runner.train(files["tiny"], config.replace(epochs=1), "torch", "cpu", run, log=lambda s: None, datasets=data)
    lines = []
    runner.resume_run(run, device="cpu", log=lines.append, datasets=data)
    assert any("has finished its 1 epochs" in line for line in lines)
    assert any(": tiny," in line for line in lines)  # the spec's own name, not the copied file's stem


def test_a_number_written_with_an_exponent_alone_is_a_number(tmp_path):
    """`weight_decay: 5e-4` was refused as a string (PyYAML follows YAML 1.1, which wants 5.0e-4)."""
    from crossattn.training.config import load_train_config, resolve_train_config

    text = resolve_train_config("fast_cpu").read_text()
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith(("weight_decay:", "lr:")))
                    + "\nweight_decay: 5e-4\nlr: 1E-3\n")
    config = load_train_config(path)
    assert config.weight_decay == 5e-4 and config.lr == 1e-3
