"""Continuing a run in the other framework: k steps in one + k in the other equal 2k in one.

Weights, BatchNorm statistics, optimizer moments and step counts are translated
(weight_transfer.optimizer_state); batch order, augmentation and learning rates are
functions of (seed, epoch, step). In float64 the switched run ends where the
uninterrupted one does, to rounding; in float32 it ends as close to it as the two
frameworks' own uninterrupted float32 runs are to each other.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from crossattn.errors import CrossattnError
from crossattn.frameworks import adapter
from crossattn.spec import load_spec, resolve_spec
from crossattn.tolerances import FLOAT64, ROUNDING_BUDGET_FACTOR
from crossattn.training import runner
from crossattn.training.config import load_train_config, resolve_train_config
from weight_transfer import optimizer_state, transfer

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

#: the tiny ResNet of test_train without conv biases before BatchNorm: such a bias has a zero gradient in
#: exact arithmetic and Adam would step on rounding noise, which no translation can reproduce
SPEC = """type: resnet_ablation
input_shape: [2, 3, 16, 16]
options:
  stem: cifar
  conv_bias: false
  widths: [8, 16]
  stage_blocks: [1, 1]
  attention_stage: 2
"""
OPTIMIZERS = {
    "adam": {"optimizer": "adam", "lr": 0.01},
    "adamw": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 5e-4},
    "sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
}
DIRECTIONS = [("torch", "paddle"), ("paddle", "torch")]
METRICS = ("train_loss", "val_loss")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("switch") / "tiny.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def base_config():
    return load_train_config(resolve_train_config("fast_cpu")).replace(epochs=2, synthetic_train=100)


@pytest.fixture(scope="module")
def data(base_config):
    return runner.load_datasets(base_config)


def quiet(_line: str) -> None:
    pass


def switched(spec_file, config, data, folder: Path, source: str, target: str) -> runner.RunResult:
    """One epoch in `source`, the second continued in `target`."""
    runner.train(spec_file, config, source, "cpu", folder, log=quiet, stop_after=1, datasets=data)
    return runner.resume_run(folder, device="cpu", framework=target, log=quiet, datasets=data)


def distances(run: runner.RunResult, reference: runner.RunResult, framework: str) -> dict[str, float]:
    """Relative metric differences per epoch and norm-relative state differences, in `framework`'s naming."""
    out = {f"{k}@{r['epoch']}": abs(r[k] - w[k]) / abs(w[k]) for r, w in zip(run.rows, reference.rows) for k in METRICS}
    slots = adapter(framework).slots(reference.trainer.model)
    state = run.trainer.state()
    if run.info["framework"] != framework:
        state, _ = transfer(state, run.info["framework"], slots, framework, complete=False)
    want = reference.trainer.state()
    for key, slot in slots.items():
        if key in state and np.issubdtype(want[key].dtype, np.floating):
            norm = np.linalg.norm(want[key].astype(np.float64))
            out[key] = float(np.linalg.norm(state[key].astype(np.float64) - want[key]) / (norm or 1.0))
    return out


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_float64_switch_continues_the_same_run(spec_file, base_config, data, tmp_path, optimizer, source, target):
    config = base_config.replace(dtype="float64", **OPTIMIZERS[optimizer])
    full = runner.train(spec_file, config, source, "cpu", tmp_path / "full", log=quiet, datasets=data)
    run = switched(spec_file, config, data, tmp_path / "switched", source, target)
    assert run.info["framework"] == target and run.info["switches"] == [{"after_epoch": 1, "from": source,
                                                                          "to": target}]
    assert [r["epoch"] for r in run.rows] == [1, 2]
    assert [(r["val_top1"], r["val_top5"]) for r in run.rows] == [(r["val_top1"], r["val_top5"]) for r in full.rows]
    gaps = distances(run, full, source)
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= FLOAT64.rtol, (worst, gaps[worst])


def test_the_optimizer_state_is_what_makes_it_exact(spec_file, base_config, data, tmp_path, monkeypatch):
    """Control: the same switch with the moments zeroed in translation ends measurably elsewhere."""
    config = base_config.replace(dtype="float64", **OPTIMIZERS["adam"])
    full = runner.train(spec_file, config, "torch", "cpu", tmp_path / "full", log=quiet, datasets=data)
    real = optimizer_state.translate

    def forgetful(state, *args, **kwargs):
        moved = real(state, *args, **kwargs)
        moved.moments = {m: {k: np.zeros_like(v) for k, v in values.items()} for m, values in moved.moments.items()}
        return moved

    monkeypatch.setattr(optimizer_state, "translate", forgetful)
    run = switched(spec_file, config, data, tmp_path / "switched", "torch", "paddle")
    gaps = distances(run, full, "torch")
    assert max(gaps.values()) > 1e-3, max(gaps.values())


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_float32_switch_within_the_frameworks_own_distance(spec_file, base_config, data, tmp_path, source, target):
    """In float32 the switched run is as close to the uninterrupted one as the other framework's own
    uninterrupted run is (ROUNDING_BUDGET_FACTOR times that distance, per epoch metric)."""
    config = base_config.replace(**OPTIMIZERS["sgd"])
    full = runner.train(spec_file, config, source, "cpu", tmp_path / "full", log=quiet, datasets=data)
    other = runner.train(spec_file, config, target, "cpu", tmp_path / "other", log=quiet, datasets=data)
    run = switched(spec_file, config, data, tmp_path / "switched", source, target)
    gap, own = distances(run, full, source), distances(other, full, source)
    for key in (f"{k}@2" for k in METRICS):
        assert gap[key] <= ROUNDING_BUDGET_FACTOR * own[key] + 1e-7, (key, gap[key], own[key])
    assert gap["train_loss@1"] == 0.0  # the first epoch is the source framework's own


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_converted_training_checkpoint_resumes_the_run(spec_file, base_config, data, tmp_path, source, target):
    """`crossattn convert` of a run's checkpoint carries the optimizer state: the converted file, resumed by
    the other framework's own loader, continues exactly as the switch does. (float32: convert writes the
    twin's float32 weights.)"""
    import json

    import cli

    config = base_config.replace(**OPTIMIZERS["adam"])
    reference = switched(spec_file, config, data, tmp_path / "switched", source, target)
    run_dir = tmp_path / "run"
    runner.train(spec_file, config, source, "cpu", run_dir, log=quiet, stop_after=1, datasets=data)
    checkpoint = next((run_dir / "checkpoints").iterdir())
    converted = checkpoint.with_suffix(".pdparams" if target == "paddle" else ".pt")
    result = CliRunner().invoke(cli.cli, ["convert", str(checkpoint), str(converted), "--spec",
                                          str(run_dir / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert "optimizer state (adam, 10 steps) translated" in result.output, result.output
    checkpoint.unlink()  # the run now holds only the converted checkpoint, in the target's own format
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "framework": target}))
    lines = []
    resumed = runner.resume_run(run_dir, device="cpu", log=lines.append, datasets=data)
    assert not any("warning" in line for line in lines), lines
    gaps = distances(resumed, reference, target)
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= FLOAT64.rtol, (worst, gaps[worst])


def test_switch_through_the_cli(spec_file, tmp_path):
    from crossattn.cli_train import train_command

    run_dir = tmp_path / "cli"
    invoke = CliRunner().invoke
    result = invoke(train_command, ["--spec", str(spec_file), "--config", "fast_cpu", "--framework", "torch",
                                    "--device", "cpu", "--run-dir", str(run_dir), "--epochs", "2", "--stop-after", "1"])
    assert result.exit_code == 0, result.output
    result = invoke(train_command, ["--resume", str(run_dir), "--framework", "paddle", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "continuing in paddle from torch's epoch_0001.pt" in result.output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pdparams"]


def test_switch_refused_under_native_bn_stats(spec_file, base_config, data, tmp_path):
    run_dir = tmp_path / "native"
    runner.train(spec_file, base_config.replace(bn_stats="native"), "torch", "cpu", run_dir, log=quiet,
                 stop_after=1, datasets=data)
    with pytest.raises(CrossattnError, match="bn_stats: native.*--framework torch"):
        runner.resume_run(run_dir, device="cpu", framework="paddle", log=quiet, datasets=data)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt"]


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_switch_refused_for_a_model_with_dropout(framework, tmp_path):
    from crossattn.training import switch

    config = load_train_config(resolve_train_config("fast_cpu")).replace(synthetic_like="mnist", image_size=None,
                                                                           synthetic_train=20, synthetic_test=10)
    module = runner.twin(framework)
    with module.session():
        spec = tmp_path / "mnist_dropout.yaml"
        spec.write_text(resolve_spec("mnist_non_local").read_text().replace("dropout: 0.0", "dropout: 0.5"))
        trainer = module.Trainer(load_spec(spec), config, "cpu", *runner.load_datasets(config))
    assert trainer.dropout_layers()
    with pytest.raises(CrossattnError, match="dropout"):
        switch.refuse_dropout(tmp_path, trainer, "paddle" if framework == "torch" else "torch", framework)


def test_optimizer_state_with_unknown_entries_is_refused():
    hyper = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False}
    content = {"optimizer": {"state": {0: {"step": np.float32(3), "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2),
                                           "max_exp_avg_sq": np.zeros(2)}}, "param_groups": [{"params": [0]}]},
               "step": 3, optimizer_state.NAMES_KEY: ["w"], optimizer_state.HYPER_KEY: hyper}
    with pytest.raises(optimizer_state.OptimizerStateError, match="max_exp_avg_sq"):
        optimizer_state.read(content, "torch")
    paddle_content = {"optimizer": {"w_0_moment1_0": np.zeros(2), "w_0_moment2_0": np.zeros(2),
                                    "w_0_beta1_pow_acc_0": np.array([0.9 ** 3]),
                                    "w_0_beta2_pow_acc_0": np.array([0.999 ** 4])},
                      "step": 3, optimizer_state.NAMES_KEY: {"w": "w_0"}, optimizer_state.HYPER_KEY: hyper}
    with pytest.raises(optimizer_state.OptimizerStateError, match="beta1_pow_acc.*3 steps"):
        optimizer_state.read(paddle_content, "paddle")
    del content[optimizer_state.HYPER_KEY]
    with pytest.raises(optimizer_state.OptimizerStateError, match="optimizer_config"):
        optimizer_state.read(content, "torch")


def test_paddles_own_adam_state_after_a_thousand_steps_is_read():
    """paddle multiplies beta^t out in float32: by step ~380 (beta 0.9) it is 1e-5 off the float64 power and
    at step 1000 it sits at a few subnormals; such a real checkpoint was refused as a wrong step count."""
    import paddle

    layer = paddle.nn.Linear(2, 1)
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=layer.parameters())
    for _ in range(1000):
        layer(paddle.ones([1, 2])).sum().backward()
        optimizer.step()
        optimizer.clear_grad()
    accumulators = {k: v.numpy() for k, v in optimizer.state_dict().items() if k != "LR_Scheduler"}
    names = {"weight": layer.weight.name, "bias": layer.bias.name}
    hyper = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False}
    content = {"optimizer": accumulators, "step": 1000, optimizer_state.NAMES_KEY: names,
               optimizer_state.HYPER_KEY: hyper}
    power = next(float(v.reshape(-1)[0]) for k, v in accumulators.items() if "beta1_pow" in k)
    assert not math.isclose(power, 0.9 ** 1001, rel_tol=1e-5)  # what the float64 rule expected
    state = optimizer_state.read(content, "paddle")
    assert state.step == 1000
    with pytest.raises(optimizer_state.OptimizerStateError, match="pow_acc.*999 steps"):
        optimizer_state.read({**content, "step": 999}, "paddle")


def test_a_parameter_no_step_reached_takes_no_state():
    """An unused head has no optimizer state in either framework; convert and align refused such a run as
    `no exp_avg for aux.weight`. A record that lands on no parameter is still refused."""
    from weight_transfer.slots import Slot

    hyper = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False}
    moment = np.arange(6.0).reshape(2, 3)
    state = optimizer_state.OptimizerState(hyper, 3, "torch", {"exp_avg": {"fc.weight": moment},
                                                                "exp_avg_sq": {"fc.weight": moment ** 2}})
    slots = {key: Slot(key, layer, "weight", "linear", (3, 2), "float32", True)
             for key, layer in (("fc.weight", "fc"), ("aux.weight", "aux"))}
    moved = optimizer_state.translate(state, slots, "paddle")
    assert set(moved.moments["exp_avg"]) == {"fc.weight"}
    assert np.array_equal(moved.moments["exp_avg"]["fc.weight"], moment.T)
    stray = optimizer_state.OptimizerState(hyper, 3, "torch", {"exp_avg": {"gone.weight": moment},
                                                                "exp_avg_sq": {"gone.weight": moment}})
    with pytest.raises(optimizer_state.OptimizerStateError, match="no paddle parameter"):
        optimizer_state.translate(stray, slots, "paddle")


def test_a_switch_that_cannot_load_or_has_nothing_to_train_records_nothing(spec_file, base_config, data, tmp_path):
    """run.json took the new framework and a `switches` entry before the checkpoint was loaded: a refused switch
    left a run claiming to be in the other framework, and a finished run recorded a switch with no epoch."""
    from crossattn.training import run_dir as runs

    config = base_config.replace(dtype="float64")
    run = tmp_path / "run"
    runner.train(spec_file, config, "torch", "cpu", run, log=quiet, datasets=data)  # both epochs: finished
    before = runs.read_info(run)
    runner.resume_run(run, device="cpu", framework="paddle", log=quiet, datasets=data)
    assert runs.read_info(run).get("switches") is None and runs.read_info(run)["framework"] == "torch"
    for _, path in runs.list_checkpoints(run):
        path.write_bytes(path.read_bytes()[:100])  # none reads back
    with pytest.raises(CrossattnError, match="none of its checkpoints"):
        runner.resume_run(run, device="cpu", framework="paddle", epochs=3, log=quiet, datasets=data)
    after = runs.read_info(run)
    assert after.get("switches") is None and after["framework"] == before["framework"] == "torch"


@pytest.mark.parametrize("change, words", [
    ({"hyper": {"adam_epsilon": "abc"}}, "`optimizer_config.adam_epsilon` = 'abc'"),
    ({"hyper": {"optimizer": "adagrad"}}, "expected one of sgd, adam, adamw"),
    ({"hyper": {"nesterov": "yes"}}, "`optimizer_config.nesterov`"),
    ({"step": -1}, "`step` = -1"),
    ({"moment": np.nan}, "holds NaN or infinity"),
])
def test_a_damaged_optimizer_state_is_refused_naming_the_entry(change, words):
    """A NaN moment and a string epsilon were copied into the converted file."""
    hyper = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False, **change.get("hyper", {})}
    moment = np.full(2, change.get("moment", 0.5))
    content = {"optimizer": {"state": {0: {"step": np.float32(3), "exp_avg": moment, "exp_avg_sq": np.ones(2)}},
                             "param_groups": [{"params": [0]}]},
               "step": change.get("step", 3), optimizer_state.NAMES_KEY: ["w"], optimizer_state.HYPER_KEY: hyper}
    with pytest.raises(optimizer_state.OptimizerStateError, match=re.escape(words)):
        optimizer_state.read(content, "torch")


def test_a_file_whose_param_groups_disagree_with_its_settings_is_refused():
    """torch's load_state_dict would apply the group's eps 1e-3; the translation used optimizer_config's 1e-8.
    A group moved only by float32 rounding (paddle's held momentum) or by a schedule (lr) agrees."""
    hyper = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False}
    group = {"params": [0], "lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 0.0}
    content = {"optimizer": {"state": {0: {"step": np.float32(3), "exp_avg": np.zeros(2), "exp_avg_sq": np.zeros(2)}},
                             "param_groups": [group]},
               "step": 3, optimizer_state.NAMES_KEY: ["w"], optimizer_state.HYPER_KEY: hyper}
    with pytest.raises(optimizer_state.OptimizerStateError, match="eps = 0.001 and `optimizer_config` says 1e-08"):
        optimizer_state.read(content, "torch", settings_recorded=True)
    assert optimizer_state.read(content, "torch") is not None  # align's live optimizers: a drift to show
    group["eps"] = float(np.float32(1e-8))
    assert optimizer_state.read(content, "torch", settings_recorded=True).step == 3


def _sgd_content(groups: list[dict], optimizer: str = "sgd", weight_decay: float = 0.0) -> dict:
    hyper = {"optimizer": optimizer, "lr": 0.1, "weight_decay": weight_decay, "adam_beta1": 0.9, "adam_beta2": 0.999,
             "adam_epsilon": 1e-8, "momentum": 0.9, "nesterov": False}
    state = {"momentum_buffer": np.ones(2)} if optimizer == "sgd" else {"step": np.float32(3),
                                                                           "exp_avg": np.zeros(2),
                                                                           "exp_avg_sq": np.zeros(2)}
    names = [f"w{i}" for i, _ in enumerate(groups)]
    return {"optimizer": {"state": {i: dict(state) for i, _ in enumerate(groups)},
                          "param_groups": [{"params": [i], **g} for i, g in enumerate(groups)]},
            "step": 3, optimizer_state.NAMES_KEY: names, optimizer_state.HYPER_KEY: hyper}


@pytest.mark.parametrize("groups, optimizer, decay, words", [
    ([{"momentum": 0.9, "dampening": 0.5}], "sgd", 0.0, "dampening = 0.5"),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "maximize": True}], "adam", 0.0, "maximize = True"),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": True}], "adam", 0.0, "amsgrad = True"),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "decoupled_weight_decay": True}], "adam", 0.1,
     "decoupled_weight_decay = True and `optimizer_config` says False"),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "decoupled_weight_decay": False}], "adamw", 0.1,
     "decoupled_weight_decay = False and `optimizer_config` says True"),
    ([{"momentum": 0.9, "lr": 0.1}, {"momentum": 0.9, "lr": 0.5}], "sgd", 0.0, "different learning rates (0.1, 0.5)"),
])
def test_a_torch_setting_paddle_cannot_follow_is_refused(groups, optimizer, decay, words):
    """Dampening, maximize, Adam's decoupled decay recorded as adam, and two groups at two learning rates were
    translated and verified; paddle's next step then differed from torch's by 0.4-1.5 of the update."""
    with pytest.raises(optimizer_state.OptimizerStateError, match=re.escape(words)):
        optimizer_state.read(_sgd_content(groups, optimizer, decay), "torch", settings_recorded=True)


@pytest.mark.parametrize("groups, optimizer, decay", [
    ([{"momentum": 0.9, "dampening": 0, "maximize": False, "lr": 0.02}, {"momentum": 0.9, "lr": 0.02}], "sgd", 0.0),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "decoupled_weight_decay": True, "amsgrad": False}], "adam", 0.0),
    ([{"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "decoupled_weight_decay": True}], "adamw", 0.1),
])
def test_settings_that_change_nothing_are_translated(groups, optimizer, decay):
    """Without weight decay Adam and AdamW are one update; equal rates in several groups are one rate."""
    assert optimizer_state.read(_sgd_content(groups, optimizer, decay), "torch", settings_recorded=True).step == 3


@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_a_converted_checkpoint_keeps_the_rate_its_last_step_took(spec_file, base_config, data, tmp_path, source):
    """torch -> paddle -> torch gave back the schedule's peak rate in param_groups (0.05 for 0.01415): torch's own
    load_state_dict and a scheduler of the user's then trained at the wrong rate."""
    import cli

    config = base_config.replace(**OPTIMIZERS["sgd"], schedule="cosine")
    run_dir = tmp_path / "run"
    runner.train(spec_file, config, source, "cpu", run_dir, log=quiet, stop_after=1, datasets=data)
    checkpoint = next((run_dir / "checkpoints").iterdir())
    target = "paddle" if source == "torch" else "torch"
    there = checkpoint.with_suffix(".pdparams" if target == "paddle" else ".pt")
    back = tmp_path / ("back" + checkpoint.suffix)
    for src, dst in ((checkpoint, there), (there, back)):
        result = CliRunner().invoke(cli.cli, ["convert", str(src), str(dst), "--spec", str(run_dir / "spec.yaml")])
        assert result.exit_code == 0, result.output
    files = {"torch": checkpoint if source == "torch" else there, "paddle": there if source == "torch" else checkpoint}
    torch_file = torch.load(files["torch"], weights_only=True)
    import paddle

    paddle_file = paddle.load(str(files["paddle"]))
    assert 0 < paddle_file["lr"] < config.lr  # a cosine schedule's value after one of two epochs
    assert torch_file["lr"] == paddle_file["lr"]
    assert all(group["lr"] == paddle_file["lr"] for group in torch_file["optimizer"]["param_groups"])
    round_trip = torch.load(back, weights_only=True) if source == "torch" else paddle.load(str(back))
    assert round_trip["lr"] == paddle_file["lr"]
    if source == "torch":
        assert all(group["lr"] == paddle_file["lr"] for group in round_trip["optimizer"]["param_groups"])
