"""`crossattn convert`: formats, prefixes, training checkpoints, safe pickles, all-or-nothing writes."""

from __future__ import annotations

import os
import re
import pickle
import sys

import numpy as np
import paddle
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

import cli
from crossattn.blocks.se import SEOptions
from crossattn.cli_convert import convert_command
from crossattn.errors import CrossattnError, TransferError
from crossattn.init import initial_state
from crossattn.spec import Spec, load_spec, parse_spec, resolve_spec
from paddle_impl import adapter as paddle_adapter
from paddle_impl.layers import batch_norm as paddle_bn
from torch_impl import adapter as torch_adapter
from torch_impl.layers import batch_norm as torch_bn
from weight_transfer import convert as convert_module
from weight_transfer.checkpoints import CheckpointError, UnsafeCheckpointError, read_checkpoint
from crossattn.model_pair import ModelPair
from weight_transfer.convert import convert
from weight_transfer.transfer import transfer
from weight_transfer.integrity import tensors_digest

ADAPTERS = {"torch": torch_adapter, "paddle": paddle_adapter}
EXTENSIONS = {"pt": ".pt", "pdparams": ".pdparams", "safetensors": ".safetensors", "npz": ".npz"}


class TinyTorch(torch.nn.Module):
    """Conv, BatchNorm and Linear: every naming and layout rule in three layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch_bn(2, 4)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class TinyPaddle(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
        self.bn = paddle_bn(2, 4)
        self.fc = paddle.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(paddle.nn.functional.relu(self.bn(self.conv(x))).mean(axis=[2, 3]))


def tiny_twins() -> ModelPair:
    return ModelPair("tiny", {"torch": TinyTorch, "paddle": TinyPaddle}, (2, 3, 5, 5))


@pytest.fixture(scope="module")
def tiny():
    return tiny_twins()


@pytest.fixture(scope="module")
def non_local():
    return ModelPair.from_spec(load_spec(resolve_spec("non_local_embedded_gaussian")))


@pytest.fixture(scope="module")
def resnet():
    """A narrow ResNet ablation model: convs, BatchNorms, a non-local block and a Linear head."""
    return ModelPair.from_spec(parse_spec({
        "type": "resnet_ablation", "input_shape": [2, 3, 8, 8],
        "options": {"num_classes": 3, "stem": "cifar", "widths": [4, 8, 8, 8], "stage_blocks": [1, 1, 1, 1],
                    "attention": {"type": "non_local", "options": {"mode": "embedded_gaussian"}}}}, "resnet_small"))


def states(twins: ModelPair, seed: int = 1, batches: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """Random weights in torch naming and their paddle transfer."""
    model = twins.build("torch")
    state = initial_state(torch_adapter.slots(model), torch_adapter.state(model), "torch", seed, mode="check")
    for key in state:
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(batches, dtype=np.int64)
    paddle_state, _ = transfer(state, "torch", twins.slots("paddle"), "paddle")
    return {"torch": state, "paddle": paddle_state}


def expected(twins: ModelPair, base: dict[str, dict[str, np.ndarray]], src_fw: str, dst_fw: str) -> dict:
    if src_fw == dst_fw:
        return base[src_fw]
    return transfer(base[src_fw], src_fw, twins.slots(dst_fw), dst_fw)[0]


def save_native(path, fmt: str, state: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Source files written by each framework's own saver, not by crossattn."""
    if fmt == "pt":
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    elif fmt == "pdparams":
        paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))
    elif fmt == "safetensors":
        save_file(state, str(path), metadata=metadata)
    else:
        np.savez(path, **state)


def load_native(path, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "pt":
        return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    if fmt == "pdparams":
        return paddle.load(str(path), return_numpy=True)
    if fmt == "safetensors":
        with safe_open(str(path), framework="np") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def assert_same_state(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# --------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("model", ["non_local", "resnet"])
def test_round_trip_torch_paddle_torch_is_exact(model, request, tmp_path):
    twins = request.getfixturevalue(model)
    base = states(twins, batches=0)  # paddle keeps no batch counter; 0 is what comes back
    save_native(tmp_path / "a.pt", "pt", base["torch"])
    there = convert(tmp_path / "a.pt", tmp_path / "b.pdparams", twins)
    back = convert(tmp_path / "b.pdparams", tmp_path / "c.pt", twins)
    assert there.passed and back.passed, there.lines() + back.lines()
    assert_same_state(load_native(tmp_path / "b.pdparams", "pdparams"), base["paddle"])
    assert_same_state(load_native(tmp_path / "c.pt", "pt"), base["torch"])
    if model == "resnet":
        assert there.transfer.transposed == back.transfer.transposed == ["fc.weight"]
    assert any(key.endswith("num_batches_tracked") for key in there.transfer.dropped)
    paddle_model = twins.build("paddle")  # paddle itself loads what was written
    missing, unexpected = paddle_model.set_state_dict(paddle.load(str(tmp_path / "b.pdparams")))
    assert not missing and not unexpected  # set_state_dict only warns: check what it reports
    assert_same_state({k: v.numpy() for k, v in paddle_model.state_dict().items()}, base["paddle"])


@pytest.mark.parametrize("src_fmt", list(EXTENSIONS))
@pytest.mark.parametrize("dst_fmt", list(EXTENSIONS))
def test_every_format_pair(src_fmt, dst_fmt, tiny, tmp_path):
    base = states(tiny)
    # neutral sources carry no metadata, so their naming is inferred from the keys and shapes
    src_fw = {"pt": "torch", "pdparams": "paddle", "safetensors": "paddle", "npz": "torch"}[src_fmt]
    dst_fw = {"pt": "torch", "pdparams": "paddle"}.get(dst_fmt, "paddle" if src_fw == "torch" else "torch")
    src = tmp_path / f"src{EXTENSIONS[src_fmt]}"
    dst = tmp_path / "out" / f"dst{EXTENSIONS[dst_fmt]}"
    save_native(src, src_fmt, base[src_fw])
    report = convert(src, dst, tiny)
    assert report.passed, report.lines()
    assert (report.source_framework, report.target_framework) == (src_fw, dst_fw)
    assert_same_state(load_native(dst, dst_fmt), expected(tiny, base, src_fw, dst_fw))
    assert report.tensors == len(expected(tiny, base, src_fw, dst_fw)) and report.bytes_written == dst.stat().st_size
    if dst_fmt == "safetensors":
        with safe_open(str(dst), framework="np") as fh:
            metadata = fh.metadata()
            assert metadata.pop("crossattn_sha256") == tensors_digest({k: fh.get_tensor(k) for k in fh.keys()})
            assert metadata == {"framework": dst_fw, "spec": "tiny"}
    assert sorted(os.listdir(dst.parent)) == [dst.name]  # no temp file left


def test_neutral_target_framework_follows_to_and_metadata(tiny, tmp_path):
    base = states(tiny)
    save_native(tmp_path / "a.safetensors", "safetensors", base["torch"], {"framework": "torch"})
    report = convert(tmp_path / "a.safetensors", tmp_path / "b.npz", tiny, to="torch")
    assert (report.source_framework, report.target_framework, report.transfer) == ("torch", "torch", None)
    assert_same_state(load_native(tmp_path / "b.npz", "npz"), base["torch"])
    with pytest.raises(CrossattnError, match="contradicts"):
        convert(tmp_path / "a.safetensors", tmp_path / "c.pt", tiny, to="paddle")


def test_module_prefix_is_stripped_automatically(tiny, tmp_path):
    base = states(tiny)
    save_native(tmp_path / "dp.pt", "pt", {f"module.{k}": v for k, v in base["torch"].items()})
    report = convert(tmp_path / "dp.pt", tmp_path / "dp.pdparams", tiny)
    assert report.passed and "prefix `module.` stripped" in report.located
    assert_same_state(load_native(tmp_path / "dp.pdparams", "pdparams"), base["paddle"])


def test_entries_beside_weights_under_another_key_are_named_as_not_written(tiny, tmp_path):
    """{state_dict, optimizer, epoch} (a user's own training file): the weights convert, and the note says the
    optimizer state and epoch were left behind; they were dropped without a word."""
    base = states(tiny)
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in base["torch"].items()},
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, tmp_path / "user.pt")
    report = convert(tmp_path / "user.pt", tmp_path / "user.pdparams", tiny)
    assert report.passed
    assert any("only the weights under `state_dict` are written" in n and "`optimizer`, `epoch`" in n
               for n in report.notes), report.notes
    assert_same_state(load_native(tmp_path / "user.pdparams", "pdparams"), base["paddle"])


def test_a_users_training_file_under_model_converts_its_weights_and_names_what_is_left(tiny, tmp_path):
    """{model, optimizer, epoch} saved by a user's own loop (no `optimizer_config`): convert refused the whole file,
    `--key model` too, where the same file under `state_dict` converted its weights."""
    base = states(tiny)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in base["torch"].items()},
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, tmp_path / "user.pt")
    report = convert(tmp_path / "user.pt", tmp_path / "user.pdparams", tiny)
    assert report.passed
    assert any("only the weights under `model` are written" in n and "`optimizer`, `epoch`" in n
               and "no `optimizer_config` record" in n for n in report.notes), report.notes
    assert_same_state(load_native(tmp_path / "user.pdparams", "pdparams"), base["paddle"])


def test_explicit_prefix_and_a_prefix_that_is_not_everywhere(tiny, tmp_path):
    base = states(tiny)
    save_native(tmp_path / "bb.npz", "npz", {f"backbone.{k}": v for k, v in base["paddle"].items()})
    report = convert(tmp_path / "bb.npz", tmp_path / "bb.pt", tiny, strip_prefix="backbone.")
    assert report.passed and "prefix `backbone.` stripped" in report.located
    with pytest.raises(CrossattnError, match="no key starts with it"):
        convert(tmp_path / "bb.npz", tmp_path / "x.pt", tiny, strip_prefix="module.")
    assert not (tmp_path / "x.pt").exists()


def test_explicit_prefix_on_some_keys_is_stripped_where_present(tiny, tmp_path):
    """A partly wrapped state dict (some keys `module.`-prefixed) converts with --strip-prefix."""
    items = list(states(tiny)["torch"].items())
    partial = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(items)}
    save_native(tmp_path / "partial.pt", "pt", partial)
    report = convert(tmp_path / "partial.pt", tmp_path / "p.pdparams", tiny, strip_prefix="module.")
    assert report.passed, report.lines()
    clashing = {**partial, f"module.{items[0][0]}": items[0][1]}  # the same name with and without it
    save_native(tmp_path / "clash.pt", "pt", clashing)
    with pytest.raises(CrossattnError, match="two tensors"):
        convert(tmp_path / "clash.pt", tmp_path / "c.pdparams", tiny, strip_prefix="module.")


def test_training_checkpoint_with_optimizer_state(tiny, tmp_path):
    base = states(tiny)
    model = tiny.build("torch")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in base["torch"].items()})
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "best_acc": 0.5}, tmp_path / "ckpt.pth")
    want = torch_adapter.state(model)
    report = convert(tmp_path / "ckpt.pth", tmp_path / "w.safetensors", tiny)
    assert report.passed and report.located == "weights under key `state_dict`, prefix `module.` stripped"
    assert_same_state(load_native(tmp_path / "w.safetensors", "safetensors"),
                      transfer(want, "torch", tiny.slots("paddle"), "paddle")[0])
    assert convert(tmp_path / "ckpt.pth", tmp_path / "w2.pt", tiny, key="state_dict").passed
    with pytest.raises(CrossattnError, match="no entry `weights`.*`state_dict`, `optimizer`"):
        convert(tmp_path / "ckpt.pth", tmp_path / "w3.pt", tiny, key="weights")


def test_two_weight_entries_prefer_the_conventional_name(tiny, tmp_path):
    base = states(tiny)
    tensors = {k: torch.from_numpy(v) for k, v in base["torch"].items()}
    torch.save({"ema_shadow": tensors, "model": tensors}, tmp_path / "two.pt")
    assert "key `model`" in convert(tmp_path / "two.pt", tmp_path / "two.npz", tiny).located
    torch.save({"a": tensors, "b": tensors}, tmp_path / "amb.pt")
    with pytest.raises(CrossattnError, match="pick one with --key"):
        convert(tmp_path / "amb.pt", tmp_path / "amb.npz", tiny)


def test_a_file_holding_the_other_frameworks_naming_is_named_as_such(tiny, tmp_path):
    save_native(tmp_path / "paddle_inside.pt", "pt", states(tiny)["paddle"])
    with pytest.raises(CrossattnError, match="follow paddle naming, but its extension says torch"):
        convert(tmp_path / "paddle_inside.pt", tmp_path / "x.pdparams", tiny)


def test_square_linear_weights_without_metadata_need_from(tmp_path):
    twins = ModelPair.from_spec(Spec("se", SEOptions(channels=4, squeeze_channels=4), name="se_square",
                                 input_shape=(2, 4, 3, 3)))
    base = states(twins)
    save_native(tmp_path / "sq.npz", "npz", base["torch"])
    with pytest.raises(CrossattnError, match="fit both torch and paddle naming.*--from"):
        convert(tmp_path / "sq.npz", tmp_path / "sq.pdparams", twins)
    assert convert(tmp_path / "sq.npz", tmp_path / "sq.pdparams", twins, source="torch").passed
    assert_same_state(load_native(tmp_path / "sq.pdparams", "pdparams"), base["paddle"])


# --------------------------------------------------------------------------- safety


class Custom:
    """Any class outside numpy: unpickling it would import this module."""


class Explode:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.mark.parametrize("payload", ["os.system", "custom class"])
def test_pdparams_with_a_foreign_global_is_refused_and_nothing_runs(payload, tiny, tmp_path):
    sentinel = tmp_path / "ran"
    state = dict(states(tiny)["paddle"])
    state["fc.bias"] = Explode(str(sentinel)) if payload == "os.system" else Custom()
    with open(tmp_path / "evil.pdparams", "wb") as fh:
        pickle.dump(state, fh, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="refused.*(posix.system|Custom).*--trust-pickle"):
        convert(tmp_path / "evil.pdparams", tmp_path / "evil.pt", tiny)
    assert not sentinel.exists()
    assert not (tmp_path / "evil.pt").exists()


def test_nested_paddle_checkpoint_reads_safely(tiny, tmp_path):
    """A paddle training checkpoint pickles OrderedDict and (name, array) tuples: plain data, no trust needed."""
    base = states(tiny)
    model = tiny.build("paddle")
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in base["paddle"].items()})
    paddle.save({"model": model.state_dict(), "epoch": 2}, str(tmp_path / "nested.pdparams"))
    content = read_checkpoint(tmp_path / "nested.pdparams").content
    assert all(isinstance(v, np.ndarray) for v in content["model"].values())
    report = convert(tmp_path / "nested.pdparams", tmp_path / "nested.pt", tiny)
    assert report.passed and "key `model`" in report.located


def test_paddle_bookkeeping_entries_are_undone(tmp_path):
    """paddle.save's name table is dropped; arrays it split (protocol 2/3, > 1 GiB) are joined."""
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    saved = {"w@@.0": whole.ravel()[:5], "w@@.1": whole.ravel()[5:], "b": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (3, 4), "slices": ["w@@.0", "w@@.1"]}},
             "StructuredToParameterName@@": {"b": "linear_0.b_0"}}
    with open(tmp_path / "split.pdparams", "wb") as fh:
        pickle.dump(saved, fh, protocol=4)
    content = read_checkpoint(tmp_path / "split.pdparams").content
    assert set(content) == {"w", "b"}
    np.testing.assert_array_equal(content["w"], whole)


def test_torch_pickle_beyond_weights_is_refused(tiny, tmp_path):
    torch.save({"state_dict": {"conv.weight": torch.zeros(4, 3, 3, 3)}, "extra": Custom()}, tmp_path / "obj.pt")
    with pytest.raises(UnsafeCheckpointError, match="weights_only.*needs `.*Custom`"):
        read_checkpoint(tmp_path / "obj.pt")


# --------------------------------------------------------------------------- errors write nothing


def test_misshaped_missing_and_unexpected_keys_are_named_and_nothing_is_written(tiny, tmp_path):
    state = dict(states(tiny)["torch"])
    state["fc.weight"] = np.zeros((5, 7), np.float32)
    del state["conv.bias"]
    state["head.weight"] = np.zeros(3, np.float32)
    save_native(tmp_path / "bad.pt", "pt", state)
    (tmp_path / "keep.pdparams").write_bytes(b"old")
    for dst in ("new.pdparams", "keep.pdparams"):
        with pytest.raises(TransferError) as info:
            convert(tmp_path / "bad.pt", tmp_path / dst, tiny)
        message = str(info.value)
        assert "mis-shaped `fc.weight`: torch shape [5, 7], paddle `fc.weight` expects [4, 5]" in message
        assert "missing `conv.bias`" in message and "unexpected `head.weight` (shape [3])" in message
    assert not (tmp_path / "new.pdparams").exists()
    assert (tmp_path / "keep.pdparams").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "keep.pdparams"]


def _perturbing_writer(monkeypatch):
    real = convert_module.write_checkpoint

    def write(path, fmt, tensors, framework, name):
        tensors = dict(tensors)
        tensors["fc.bias"] = tensors["fc.bias"] + 1e-3
        real(path, fmt, tensors, framework, name)

    monkeypatch.setattr(convert_module, "write_checkpoint", write)


def test_failed_verification_leaves_dst_absent_or_untouched(tiny, tmp_path, monkeypatch):
    save_native(tmp_path / "a.pt", "pt", states(tiny)["torch"])
    _perturbing_writer(monkeypatch)
    report = convert(tmp_path / "a.pt", tmp_path / "sub" / "b.pdparams", tiny)
    assert not report.written and not report.passed and not report.verification.passed
    tensors = report.verification.comparisons[0]
    assert "`fc.bias` differs from the source" in tensors.note  # found by its digest, sized from the source read again
    assert tensors.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert not (tmp_path / "sub").exists()
    (tmp_path / "c.pdparams").write_bytes(b"old")
    assert not convert(tmp_path / "a.pt", tmp_path / "c.pdparams", tiny).written
    assert (tmp_path / "c.pdparams").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "c.pdparams"]
    assert convert(tmp_path / "a.pt", tmp_path / "d.pdparams", tiny, verify=False).written


# --------------------------------------------------------------------------- command line


def run_cli(monkeypatch, *args: str) -> int:
    """The real entry point (cli.main), as the console script runs it; returns the exit status."""
    cli.cli.add_command(convert_command)
    monkeypatch.setattr(sys, "argv", ["crossattn", "convert", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    spec = load_spec(resolve_spec("non_local_embedded_gaussian"))
    base = states(ModelPair.from_spec(spec))
    save_native(tmp_path / "a.pt", "pt", {f"module.{k}": v for k, v in base["torch"].items()})
    assert run_cli(monkeypatch, str(tmp_path / "a.pt"), str(tmp_path / "a.pdparams"),
                   "--spec", "non_local_embedded_gaussian") == 0
    out = capsys.readouterr().out
    assert "prefix `module.` stripped" in out and "2 renamed" in out and "verify    PASS" in out
    assert run_cli(monkeypatch, str(tmp_path / "a.pt"), str(tmp_path / "a.onnx"), "--spec",
                   "non_local_embedded_gaussian") == 2
    assert "unknown checkpoint extension '.onnx'" in capsys.readouterr().err
    assert run_cli(monkeypatch, str(tmp_path / "none.pt"), str(tmp_path / "b.pdparams"), "--spec",
                   "non_local_embedded_gaussian") == 2
    assert run_cli(monkeypatch, str(tmp_path / "a.pt"), str(tmp_path / "b.pdparams"), "--spec", "se_test") == 2
    with open(tmp_path / "evil.pdparams", "wb") as fh:
        pickle.dump({"x": Custom()}, fh)
    assert run_cli(monkeypatch, str(tmp_path / "evil.pdparams"), str(tmp_path / "e.pt"), "--spec",
                   "non_local_embedded_gaussian") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "refused" in err
    real = convert_module.write_checkpoint

    def corrupt(path, fmt, tensors, framework, name):
        real(path, fmt, {k: v + 1 if v.dtype.kind == "f" else v for k, v in tensors.items()}, framework, name)

    monkeypatch.setattr(convert_module, "write_checkpoint", corrupt)
    assert run_cli(monkeypatch, str(tmp_path / "a.pt"), str(tmp_path / "f.pdparams"), "--spec",
                   "non_local_embedded_gaussian") == 1
    captured = capsys.readouterr()
    assert "verify    FAIL" in captured.out and "was not written" in captured.err
    assert not (tmp_path / "f.pdparams").exists()


# --------------------------------------------------------------------------- review regressions

@pytest.mark.parametrize("src_fmt, dst_fmt", [("pt", "pdparams"), ("pdparams", "pt")])
def test_full_verification_adds_float64_forwards_in_both_modes(src_fmt, dst_fmt, tiny, tmp_path):
    source = "torch" if src_fmt == "pt" else "paddle"
    save_native(tmp_path / f"a.{src_fmt}", src_fmt, states(tiny)[source])
    report = convert(tmp_path / f"a.{src_fmt}", tmp_path / f"b.{dst_fmt}", tiny, full_verify=True)
    assert report.passed and report.written, report.lines()
    names = [c.tensor for c in report.verification.comparisons]
    assert names[:2] == ["tensors", "output [eval, float32]"]
    assert {"output [train, float64]", "output [eval, float64]"} <= set(names)
    assert all(c.max_abs <= 1e-9 for c in report.verification.comparisons if "float64" in c.tensor)


def test_float64_checkpoint_converts_across_frameworks(tiny, tmp_path):
    """The transfer casts to the twin's float32; verification compares the conversion, not the cast."""
    state = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in states(tiny)["torch"].items()}
    save_native(tmp_path / "f64.pt", "pt", state)
    report = convert(tmp_path / "f64.pt", tmp_path / "f64.pdparams", tiny)
    assert report.passed and report.written, report.lines()
    assert report.transfer.cast


def test_unwritable_destination_is_a_user_error(tiny, tmp_path):
    save_native(tmp_path / "a.pt", "pt", states(tiny)["torch"])
    with pytest.raises(CheckpointError, match="cannot write"):
        convert(tmp_path / "a.pt", tmp_path / "a.pt" / "inside.pdparams", tiny)


def test_self_referential_pickle_is_a_user_error(tiny, tmp_path):
    looped: dict = {}
    looped["a"] = looped
    with open(tmp_path / "loop.pdparams", "wb") as fh:
        pickle.dump(looped, fh, protocol=4)
    with pytest.raises(CheckpointError, match="refers to itself"):
        read_checkpoint(tmp_path / "loop.pdparams")


def test_format_pt_metadata_does_not_override_the_keys(tiny, tmp_path):
    """safetensors.torch writers record `format: pt`; the keys (paddle naming here) decide."""
    save_native(tmp_path / "p.safetensors", "safetensors", states(tiny)["paddle"], metadata={"format": "pt"})
    report = convert(tmp_path / "p.safetensors", tmp_path / "t.pt", tiny)
    assert report.passed, report.lines()
    assert_same_state(load_native(tmp_path / "t.pt", "pt"), expected(tiny, states(tiny), "paddle", "torch"))


def test_trusted_pickles_load_whole_modules_and_protocol_2_files(tiny, tmp_path):
    base = states(tiny)
    model = tiny.build("torch")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in base["torch"].items()})
    torch.save(model, tmp_path / "whole.pt")  # a pickled module: needs trust
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / "whole.pt")
    assert convert(tmp_path / "whole.pt", tmp_path / "w.pdparams", tiny, trust_pickle=True).passed
    paddle.save({k: paddle.to_tensor(v) for k, v in base["paddle"].items()}, str(tmp_path / "p2.pdparams"),
                protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(tmp_path / "p2.pdparams")
    report = convert(tmp_path / "p2.pdparams", tmp_path / "p2.pt", tiny, trust_pickle=True)
    assert report.passed
    assert_same_state(load_native(tmp_path / "p2.pt", "pt"), expected(tiny, base, "paddle", "torch"))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_bfloat16_checkpoints_are_upcast_exactly(tiny, tmp_path, fmt):
    from safetensors.torch import save_file as save_torch_file

    state = {k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
             for k, v in states(tiny)["torch"].items()}
    path = tmp_path / f"bf16.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_torch_file(state, str(path))
    report = convert(path, tmp_path / "out.pdparams", tiny)
    assert report.passed, report.lines()
    written = load_native(tmp_path / "out.pdparams", "pdparams")
    assert np.array_equal(written["conv.weight"], state["conv.weight"].float().numpy())


def test_a_written_pdparams_carries_the_sha256_of_its_pickle(tmp_path):
    """The digest is taken while the pickle is written (on a second thread), not by reading the file back."""
    import hashlib

    import paddle

    from weight_transfer.checkpoints import write_checkpoint
    from weight_transfer.integrity import TRAILER_LEN, TRAILER_MAGIC, verify_pickle

    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.weight": rng.standard_normal((64, 3 + i, 3, 3)) for i in range(9)}
    tensors["big"] = rng.standard_normal((512, 1024)).astype(np.float32)  # several MiB: written in one piece
    path = tmp_path / "model.pdparams"
    write_checkpoint(path, "paddle", tensors, "paddle", "test")
    data = path.read_bytes()
    body, trailer = data[:-TRAILER_LEN], data[-TRAILER_LEN:]
    assert trailer == TRAILER_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"
    assert verify_pickle(path)
    loaded = paddle.load(str(path))
    assert loaded.keys() == tensors.keys() and all(np.array_equal(loaded[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("content", [b"garbage\n", bytes(range(256)) * 3, b"\x80\x02\x8a\x0a"])
def test_a_torch_file_that_is_not_a_pickle_is_called_damaged_not_unsafe(content, tmp_path):
    """Random bytes fail torch's weights-only unpickler too; they are reported as what they are."""
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (readable )?torch checkpoint") as info:
        read_checkpoint(tmp_path / "bad.pt")
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_a_legacy_torch_file_needing_code_is_still_refused_as_unsafe(tmp_path):
    torch.save({"w": torch.zeros(2), "extra": Custom()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="needs `.*Custom`.*--trust-pickle"):
        read_checkpoint(tmp_path / "legacy.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(read_checkpoint(tmp_path / "plain.pt").content["w"], np.ones(2, np.float32))


def test_a_file_of_the_other_framework_under_this_extension_is_named_as_such(tiny, tmp_path):
    """A torch zip named .pdparams read as 'damaged: not a whole pickle'; a paddle pickle named .pt as 'needs
    --trust-pickle', then 'Invalid magic number'."""
    base = states(tiny)
    save_native(tmp_path / "torch.pt", "pt", base["torch"])
    save_native(tmp_path / "paddle.pdparams", "pdparams", base["paddle"])
    os.replace(tmp_path / "torch.pt", tmp_path / "torch.pdparams")
    os.replace(tmp_path / "paddle.pdparams", tmp_path / "paddle.pt")
    with pytest.raises(CheckpointError, match=r"named \.pdparams but holds a torch checkpoint.*rename it to \.pt"):
        read_checkpoint(tmp_path / "torch.pdparams")
    with pytest.raises(CheckpointError, match=r"named \.pt but holds a plain pickle.*rename it to \.pdparams"):
        read_checkpoint(tmp_path / "paddle.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({k: torch.from_numpy(v) for k, v in base["torch"].items()}, legacy, _use_new_zipfile_serialization=False)
    assert read_checkpoint(legacy).content  # torch's own legacy pickle (protocol 2) is still torch's


class CumulativeTorch(TinyTorch):
    def __init__(self) -> None:
        super().__init__()
        self.bn.momentum = None  # a cumulative average, by num_batches_tracked


def test_a_cumulative_batch_norm_is_named_both_ways(tmp_path):
    """paddle keeps no counter: the average over N batches does not go on in paddle, and back in torch the counter
    is 0; both conversions passed without a word."""
    pair = ModelPair("cumulative", {"torch": CumulativeTorch, "paddle": TinyPaddle}, (2, 3, 5, 5))
    base = states(pair)
    base["torch"]["bn.num_batches_tracked"] = np.array(7)
    save_native(tmp_path / "cum.pt", "pt", base["torch"])
    there = convert(tmp_path / "cum.pt", tmp_path / "cum.pdparams", pair)
    assert any("`bn` (momentum None) averages its running statistics over all 7 batches" in n for n in there.notes)
    back = convert(tmp_path / "cum.pdparams", tmp_path / "back.pt", pair)
    assert any("counter starts at 0 here" in n for n in back.notes)
    plain = convert(tmp_path / "cum.pdparams", tmp_path / "plain.pt", tiny_twins())
    assert not any("momentum None" in n for n in plain.notes)


@pytest.mark.parametrize("shape", ["doubling", "cycle"])
def test_a_pickle_referring_to_one_dict_many_times_is_read_once(tiny, tmp_path, shape):
    """A 700-byte .pdparams whose dicts each refer twice to the next took 2^depth visits (40 s and 2 GB at 21
    levels); a dict holding itself is named as such."""
    import pickle

    nested: dict = {"x": np.zeros(1, np.float32)}
    if shape == "doubling":
        for _ in range(40):
            nested = {"a": nested, "b": nested}
    else:
        nested["self"] = nested
    path = tmp_path / "bomb.pdparams"
    path.write_bytes(pickle.dumps({"fc1.weight": np.zeros((2, 2), np.float32), "junk": nested}, protocol=4))
    words = "found no mapping of names to tensors" if shape == "doubling" else "refers to itself"
    with pytest.raises(CrossattnError, match=words):
        convert(path, tmp_path / "out.pt", tiny)  # 2^40 visits would not return at all
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("odd, words", [("meta", "on torch's meta device"), ("sparse", "sparse_coo tensor"),
                                        ("int", None), ("negated", None)])
def test_odd_torch_tensors_are_named_or_read_for_what_they_hold(tiny, tmp_path, odd, words):
    """A meta, sparse or lazily negated tensor ended convert in a traceback, and an integer tensor for a float weight
    converted with --no-verify but failed the verification's forward."""
    base = {k: torch.from_numpy(v) for k, v in states(tiny)["torch"].items()}
    key = next(k for k, v in base.items() if v.dim() == 4)
    base[key] = {"meta": lambda t: t.to("meta"), "sparse": lambda t: t.to_sparse(),
                 "int": lambda t: (t * 100).round().int(), "negated": lambda t: t.neg()._neg_view()}[odd](base[key])
    torch.save(base, tmp_path / "odd.pt")
    if words is not None:
        with pytest.raises(CrossattnError, match=re.escape(words)):
            convert(tmp_path / "odd.pt", tmp_path / "odd.pdparams", tiny)
        assert not (tmp_path / "odd.pdparams").exists()
        return
    report = convert(tmp_path / "odd.pt", tmp_path / "odd.pdparams", tiny)
    assert report.passed
    written = load_native(tmp_path / "odd.pdparams", "pdparams")
    expected = base[key].resolve_neg().double().numpy() if odd == "negated" else base[key].double().numpy()
    assert np.array_equal(written[key].astype(np.float64), expected)


def test_a_failed_safetensors_write_is_named_by_its_destination(tiny, tmp_path, monkeypatch):
    """safetensors reports a full disk or file-size limit as a SafetensorError, not an OSError: a traceback."""
    import safetensors.numpy
    from safetensors import SafetensorError

    base = states(tiny)
    save_native(tmp_path / "src.pt", "pt", base["torch"])
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"the user's older file")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(CrossattnError, match=re.escape(f"{dst}: cannot write it")):
        convert(tmp_path / "src.pt", dst, tiny, to="paddle")
    assert dst.read_bytes() == b"the user's older file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.safetensors", "src.pt"]
