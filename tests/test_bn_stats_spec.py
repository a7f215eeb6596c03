"""A spec's `bn_stats`: one running-statistics rule both twins follow, judged by check under that rule.

The training config's `bn_stats` (when set) wins for a run; unset, the spec's
rule is used, else torch's; the run records the rule it resolved to.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from crossattn.bn_stats import bn_stats_rule
from crossattn.check import check_spec
from crossattn.errors import SpecError
from crossattn.model_pair import ModelPair
from crossattn.spec import load_spec, parse_spec

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

SPEC = """type: resnet_ablation
input_shape: [2, 3, 16, 16]
bn_stats: {rule}
options:
  stem: cifar
  widths: [8, 16]
  stage_blocks: [1, 1]
  attention_stage: 2
"""


def _spec(tmp_path, rule: str):
    path = tmp_path / f"tiny_{rule}.yaml"
    path.write_text(SPEC.format(rule=rule))
    return load_spec(path)


def test_misspelt_rule_names_key_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(rule="padle"))
    with pytest.raises(SpecError, match=r"bn_stats.*did you mean `paddle`"):
        load_spec(path)


def test_rule_absent_is_none():
    assert parse_spec(yaml.safe_load(SPEC.replace("bn_stats: {rule}\n", ""))).bn_stats is None


@pytest.mark.parametrize("rule", ["torch", "paddle"])
def test_both_twins_fold_by_the_spec_rule(tmp_path, rule):
    """One train-mode forward: both twins' first running variance follows `rule`'s formula (biased for paddle,
    unbiased for torch), whichever framework it is."""
    from crossattn.conventions import replay_running_stats

    pair = ModelPair.from_spec(_spec(tmp_path, rule))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    t_model, p_model = pair.build("torch").double(), pair.build("paddle")
    p_model.to(dtype="float64")
    t_model.train(), p_model.train()
    t_bn, p_bn = t_model.stem[1], dict(p_model.named_sublayers())["stem.1"]
    seen = {}
    t_bn.register_forward_pre_hook(lambda m, inputs: seen.update(torch=inputs[0].detach().numpy()))
    p_bn.register_forward_pre_hook(lambda m, inputs: seen.update(paddle=inputs[0].numpy()))
    t_model(torch.from_numpy(x)), p_model(paddle.to_tensor(x))
    for framework, got in (("torch", t_bn.running_var.numpy()), ("paddle", p_bn._variance.numpy())):
        v = seen[framework]  # each twin's own weights (not shared here): its own batch
        calls = [(v.mean(axis=(0, 2, 3)), v.var(axis=(0, 2, 3)), v.size // v.shape[1])]
        want = replay_running_stats(np.zeros(8), np.ones(8), calls, rule)[1]
        other = replay_running_stats(np.zeros(8), np.ones(8), calls, "paddle" if rule == "torch" else "torch")[1]
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=framework)
        assert np.abs(got - other).max() > 1e-5  # the rules differ by var / (n - 1) * 0.1, n = 512 here


@pytest.mark.parametrize("rule", ["torch", "paddle"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_passes_under_the_spec_rule(tmp_path, rule, dtype):
    cases = check_spec(_spec(tmp_path, rule), dtype=dtype)
    assert cases and all(c.passed for c in cases), [c.worst for c in cases if not c.passed]
    train = [c for c in cases if c.mode == "train"]
    assert all(any(f"bn_stats: {rule}" in n for n in c.notes) for c in train)
    assert all(any(r.category == "running_stat" for r in c.comparisons) for c in train)


def test_check_fails_a_twin_that_ignores_the_spec_rule(tmp_path):
    """The spec asks for paddle's rule; a torch twin that keeps its own (unbiased) fold must fail."""
    from torch_impl.layers import apply_bn_stats

    spec = _spec(tmp_path, "paddle")
    pair = ModelPair.from_spec(spec)
    build = pair.builders["torch"]
    pair.builders["torch"] = lambda: apply_bn_stats(build(), "torch")
    cases = check_spec(pair)
    train = [c for c in cases if c.mode == "train"]
    assert train and not any(c.passed for c in train)
    assert all(any(r.category == "running_stat" and not r.passed and "var" in r.tensor for r in c.comparisons)
               for c in train)
    assert all(c.passed for c in cases if c.mode == "eval")


def test_run_records_the_resolved_rule(tmp_path):
    """Unset in the training config: the spec's rule; set: the config's."""
    spec = _spec(tmp_path, "paddle")
    assert bn_stats_rule(None, spec) == "paddle"
    assert bn_stats_rule("torch", spec) == "torch"
    assert bn_stats_rule(None, None) == "torch"
