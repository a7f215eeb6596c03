"""`crossattn align`: N optimizer steps of both frameworks side by side, judged at every step.

The default suite aligns a narrow non-local ResNet (the ResNet18 layout with two
stages of width 8 and 16, a dot-product non-local block) at 16x16; the full
ResNet18 runs behind `slow`. The specs leave out the parameters whose gradient
is zero in exact arithmetic (conv biases before BatchNorm, a bias feeding the
zero-initialised BatchNorm after the non-local W): Adam turns their rounding
noise into full-size steps, which align rightly reports as drift in float32.
"""

from __future__ import annotations

import collections
import importlib
import json
from collections.abc import Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from crossattn.align import AlignSettings, align, align_config, table
from crossattn.model_pair import ModelPair
from crossattn.spec import load_spec

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

NON_LOCAL_RESNET = """type: resnet_ablation
input_shape: [4, 3, 16, 16]
options:
  stem: cifar
  conv_bias: false
  widths: [8, 16]
  stage_blocks: [1, 1]
  attention_stage: 2
  attention:
    type: non_local
    options:
      mode: dot_product
      reduction: 2
      sub_sample: true
      bn_layer: false
"""
RESNET18_NL = """type: resnet_ablation
input_shape: [8, 3, 32, 32]
options:
  conv_bias: false
  attention_stage: 3
  attention:
    type: non_local
    options:
      mode: dot_product
      reduction: 2
      sub_sample: false
      bn_layer: false
"""
OPTIMIZERS = {"adam": {"optimizer": "adam", "lr": 1e-3},
              "sgd": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}}
#: the full ResNet18 at the seed's learning rate (Adam) and a tenth of the small model's (SGD: the
#: dot-product block without BatchNorm diverges at lr 0.01 with batch 4)
SLOW_OPTIMIZERS = {"adam": {"optimizer": "adam", "lr": 1e-4},
                   "sgd": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}}
FIXTURE = "tests.fixtures.user_pair"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pair_of(text: str, tmp_path) -> ModelPair:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return ModelPair.from_spec(load_spec(path))


def run(pair, optimizer="adam", steps=20, **settings):
    return align(pair, align_config(steps=steps, **OPTIMIZERS[optimizer]), AlignSettings(steps=steps, **settings))


def assert_aligned(report, steps=20):
    assert len(report.rows) == steps
    drift = report.first_drift
    assert drift is None, (drift.step, drift.worst.tensor, drift.worst.max_abs, drift.worst.norm_rel)
    assert report.passed, [c.tensor for c in report.final if not c.passed]
    categories = {c.category for c in report.final}
    assert {"param", "buffer", "moment"} <= categories, categories
    assert all(row.loss_diff <= report.settings.tolerance.atol for row in report.rows) or \
        report.settings.dtype == "float32"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_float64_steps_stay_aligned(tmp_path, optimizer, source):
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), optimizer, source=source)
    assert_aligned(report)
    moments = [c for c in report.final if c.category == "moment"]
    assert len(moments) == (2 if optimizer == "adam" else 1) * sum(1 for c in report.final if c.category == "param")
    assert max(row.param_norm_rel for row in report.rows) < 1e-12
    assert all(row.parted is None for row in report.rows)  # float64 never re-anchors


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_float32_steps_pass_the_float32_rule(tmp_path, optimizer, source):
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), optimizer, source=source, dtype="float32")
    assert_aligned(report)


#: the second stage's first conv weight: nudged by the planted parting, held in float16 by the planted defect
PLANTED = "stages.1.0.conv1.weight"


def plant_after_steps(monkeypatch, framework: str, name: str, when: Callable[[int, np.ndarray], bool],
                      change: Callable[[np.ndarray], np.ndarray]) -> None:
    """After each float32 step of `framework` for which `when(k, batch)` holds (k counts that model's float32
    steps), parameter `name` is replaced by `change(its value)`; float64 runs are never touched."""
    loop = importlib.import_module(f"{framework}_impl.train")
    real = loop.step_arrays
    taken: collections.Counter = collections.Counter()

    def step_arrays(model, optimizer, x, labels, lr, dropouts=None):
        loss = real(model, optimizer, x, labels, lr, dropouts)
        if x.dtype == np.float32:
            taken[id(model)] += 1
            if when(taken[id(model)], x):
                param = dict(model.named_parameters())[name]
                value = param.detach().numpy() if framework == "torch" else param.numpy()
                new = np.ascontiguousarray(change(value), dtype=value.dtype)
                if framework == "torch":
                    with torch.no_grad():
                        param.copy_(torch.from_numpy(new))
                else:
                    param.set_value(new)
        return loss

    monkeypatch.setattr(loop, "step_arrays", step_arrays)


def plant_parting(monkeypatch, framework: str, name: str, at_step: int, size: float = 1e-3) -> None:
    """After its `at_step`-th float32 step, `framework` nudges parameter `name` once by `size` of its norm: what a
    kink crossing does to a free-running float32 trajectory (a jump far past rounding), while every step, the
    re-done one included, is computed correctly."""
    plant_after_steps(monkeypatch, framework, name, lambda k, x: k == at_step,
                      lambda v: v + size * np.linalg.norm(v) / np.sqrt(v.size))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_parted_trajectories_are_re_anchored_and_pass(tmp_path, monkeypatch, optimizer, source):
    """Free-running float32 trajectories of equal twins can part where a rounding-level state difference puts a
    ReLU input on the other side of zero (measured: the gradient jumps by 3e-2 of scale; docs/training.md). Which
    seed and framework cross depends on each CPU's float32 kernels, so the parting is planted here: the step
    redone from the reference's state passes, is reported as re-anchored, and the run goes on from there."""
    target = "paddle" if source == "torch" else "torch"
    plant_parting(monkeypatch, target, PLANTED, at_step=3)
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), optimizer, steps=6, source=source, dtype="float32")
    assert_aligned(report, steps=6)
    anchored = [row for row in report.rows if row.reanchored]
    assert [row.step for row in anchored] == [3] and report.reanchors == 1
    assert not anchored[0].parted.passed and anchored[0].parted.tensor == PLANTED  # the free-running step failed
    data = report.to_json()
    assert data["passed"] and data["reanchors"] == 1 and data["steps"][2]["reanchored"]["passed"]
    text = table(report)
    assert "re-anchored: free-running float32 trajectories parted at a non-smooth point" in text
    assert "PASS: every step within tolerance, 1 re-anchored" in text


@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_a_near_tie_of_one_batch_passes_on_a_second_batch(tmp_path, monkeypatch, source):
    """A kink crossed by a step's own rounding from a shared state (measured: SGD seed 39, step 2, torch's
    float32 forward puts one ReLU input at -6.0e-8 where float64 has +1.3e-7) belongs to that batch. Planted
    here as a jump on step 3's batch only, in the free-running and the redone step alike: a second batch from
    the same state passes, the row says so, and the run goes on."""
    target = "paddle" if source == "torch" else "torch"
    rng = np.random.default_rng([0, 7, 2])  # align's batch of step 3 (seed 0)
    batch = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    plant_after_batch(monkeypatch, target, PLANTED, batch)
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), "sgd", steps=6, source=source, dtype="float32")
    assert_aligned(report, steps=6)
    row = report.rows[2]
    assert row.reanchored and row.near_tie is not None and not row.near_tie.passed
    assert [r.step for r in report.rows if r.near_tie is not None] == [3]
    assert report.to_json()["steps"][2]["reanchored"]["shared_state_worst"]["tensor"] == PLANTED
    assert "second batch" in table(report)


def plant_after_batch(monkeypatch, framework: str, name: str, batch: np.ndarray, size: float = 1e-3) -> None:
    """After every float32 step of `framework` on exactly `batch`, parameter `name` is nudged by `size` of its
    norm: what a near-tie of that batch does; any other batch is stepped correctly."""
    plant_after_steps(monkeypatch, framework, name, lambda k, x: np.array_equal(x, batch),
                      lambda v: v + size * np.linalg.norm(v) / np.sqrt(v.size))


def plant_float16_parameter(monkeypatch, framework: str, name: str, from_step: int) -> None:
    """From its `from_step`-th float32 step on, `framework` rounds parameter `name` through float16 after each
    update: a float32-only defect (a parameter kept in half precision) that float64 runs never see."""
    plant_after_steps(monkeypatch, framework, name, lambda k, x: k >= from_step,
                      lambda v: v.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_a_planted_float32_defect_fails_despite_re_anchoring(tmp_path, monkeypatch, optimizer, source):
    """The defect from step 3 on: the free-running step fails, the step redone from the reference's state
    fails too, and the drift names the tensor (1.6x past the float32 rule's 1024x factor)."""
    plant_float16_parameter(monkeypatch, "paddle", PLANTED, from_step=3)
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), optimizer, steps=5, source=source, dtype="float32")
    drift = report.first_drift
    assert drift is not None and drift.step == 3, drift
    assert drift.worst.tensor == PLANTED and "less accurate than rounding explains" in drift.worst.note
    assert drift.parted is not None and not drift.reanchored  # re-anchored, and failed from the shared state
    assert report.reanchors == 0 and not report.passed
    assert report.to_json()["first_drift"] == {"step": 3, "tensor": PLANTED}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_planted_adam_epsilon_is_caught_at_the_first_step(tmp_path, monkeypatch, source, dtype):
    """Adam epsilon 1e-7 in paddle against 1e-8 in torch: the very first update differs."""
    import paddle_impl.train as paddle_train

    real = paddle_train.make_optimizer
    monkeypatch.setattr(paddle_train, "make_optimizer", lambda model, config: real(model, config.replace(
        adam_epsilon=1e-7)))
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), "adam", steps=5, source=source, dtype=dtype)
    drift = report.first_drift
    assert drift is not None and drift.step == 1
    assert drift.worst.category == "param" and drift.worst.max_abs > 1e-8, drift.worst
    assert not report.passed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_planted_momentum_shows_from_the_second_step(tmp_path, monkeypatch, dtype):
    """SGD momentum 0.9 against 0.89: the first step has no momentum yet, so the drift starts at step 2
    (in float32 too: the float64 trajectories disagree there, so the step is not re-anchored)."""
    import torch_impl.train as torch_train

    real = torch_train.make_optimizer
    monkeypatch.setattr(torch_train, "make_optimizer", lambda model, config: real(model, config.replace(
        momentum=0.89)))
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), "sgd", steps=4, dtype=dtype)
    assert report.rows[0].passed
    assert report.first_drift is not None and report.first_drift.step == 2
    assert report.first_drift.parted is None
    moments = [c for c in report.final if c.category == "moment"]
    assert any(not c.passed for c in moments)


@pytest.mark.parametrize("beta", ["adam_beta1", "adam_beta2"])
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_a_planted_paddle_beta_is_a_drift_not_a_refused_checkpoint(tmp_path, monkeypatch, source, beta):
    """paddle's running beta powers follow its own betas: they were held to the config's as a file's are, and align
    stopped with a checkpoint error instead of its table."""
    import paddle_impl.train as paddle_train

    real = paddle_train.make_optimizer
    monkeypatch.setattr(paddle_train, "make_optimizer", lambda model, config: real(model, config.replace(
        **{beta: 0.89 if beta == "adam_beta1" else 0.99})))
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), "adam", steps=3, source=source)
    assert report.first_drift is not None and report.first_drift.step == 2  # Adam's first step takes no beta
    assert any(not c.passed for c in report.final if c.category == "moment")
    assert not report.passed


def test_dropout_is_masked_alike_and_said(tmp_path):
    from crossattn.spec import resolve_spec

    spec = tmp_path / "mnist.yaml"
    spec.write_text(resolve_spec("mnist_non_local").read_text().replace("dropout: 0.0", "dropout: 0.5")
                    .replace("input_shape: [2, 1, 28, 28]", "input_shape: [2, 1, 28, 28]"))
    report = align(ModelPair.from_spec(load_spec(spec)), align_config(steps=2, **OPTIMIZERS["sgd"]),
                   AlignSettings(steps=2, batch_size=2))
    assert any("plain dropout applied with the masks of one stream both frameworks share" in note
               for note in report.notes), report.notes
    assert report.first_drift is None


def test_cli_on_a_user_pair_writes_table_json_and_plot(tmp_path):
    import cli
    from tests.fixtures import user_pair

    names = tmp_path / "names.yaml"
    names.write_text(yaml.safe_dump(user_pair.NAME_MAP))
    common = ["align", "--torch-model", f"{FIXTURE}:build_torch", "--name-map", str(names),
              "--input-shape", "2,3,6,6", "--steps", "6", "--optimizer", "sgd", "--lr", "0.05",
              "--schedule", "cosine", "--warmup-steps", "2"]
    out = tmp_path / "align.json"
    plot = tmp_path / "align.png"
    result = CliRunner().invoke(cli.cli, [*common, "--paddle-model", f"{FIXTURE}:build_paddle", "--json", str(out),
                                          "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "PASS: every step within tolerance" in result.output
    data = json.loads(out.read_text())
    assert data["passed"] and len(data["steps"]) == 6 and data["first_drift"] is None
    lrs = [row["lr"] for row in data["steps"]]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[2]  # warmup, then cosine decay
    assert any(c["category"] == "moment" for c in data["final"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    defect = CliRunner().invoke(cli.cli, [*common, "--paddle-model", f"{FIXTURE}:build_paddle_defect"])
    assert defect.exit_code == 1, defect.output
    assert "first drift at step 1" in defect.output and "<- first drift" in defect.output


def test_cli_errors_are_one_paragraph(tmp_path):
    import cli

    result = CliRunner().invoke(cli.cli, ["align", "--torch-model", f"{FIXTURE}:build_torch"])
    assert result.exit_code != 0 and "--paddle-model" in str(result.exception or result.output)
    result = CliRunner().invoke(cli.cli, ["align", str(tmp_path / "none.yaml"), "--betas", "0.9"])
    assert "--betas" in str(result.exception or result.output)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("source", ["torch", "paddle"])
def test_resnet18_non_local_stays_aligned(tmp_path, dtype, optimizer, source):
    """The full non-local ResNet18 (one dot-product block after stage 3) at 32x32, batch 8, 20 steps.

    float32 passes in both directions: Adam with one re-anchor (step 2), SGD with none. The SGD pass says only
    that neither framework's float32 trajectory is more than 1024x further from its float64 trajectory than the
    other's (at most 184x, the loss at step 14): the dot-product block without BatchNorm amplifies rounding, and
    the float32 losses are 0.78 apart at step 18, both trajectories having left float64 (the rule is a ratio).
    Equivalence here rests on float64."""
    steps = 20
    report = align(pair_of(RESNET18_NL, tmp_path), align_config(steps=steps, **SLOW_OPTIMIZERS[optimizer]),
                   AlignSettings(steps=steps, batch_size=8, source=source, dtype=dtype))
    assert_aligned(report, steps)


@pytest.mark.parametrize("planted", [False, True])
def test_resynchronised_trajectories_keep_the_verdict(tmp_path, monkeypatch, planted):
    """Both float32 trajectories far from float64 would weaken the rule (it compares their distances), so past
    RESYNC_DRIFT all sides are put on the reference's float32 state. Forced after every step here: equal twins
    still pass, and the float16 defect still fails at its first step."""
    import crossattn.align as align_module

    monkeypatch.setattr(align_module, "RESYNC_DRIFT", 0.0)
    if planted:
        plant_float16_parameter(monkeypatch, "paddle", PLANTED, from_step=3)
    report = run(pair_of(NON_LOCAL_RESNET, tmp_path), "adam", steps=5, dtype="float32")
    if planted:
        assert report.first_drift is not None and report.first_drift.step == 3
        assert report.first_drift.worst.tensor == PLANTED
    else:
        assert_aligned(report, steps=5)
    assert [row.step for row in report.rows if row.resynced] == ([1, 2] if planted else [1, 2, 3, 4])
    assert report.to_json()["steps"][0]["resynced"] is True
    assert "re-synchronised on the reference's float32 state" in table(report)
