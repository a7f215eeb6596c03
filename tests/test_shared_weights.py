"""A tied parameter (`b.weight = a.weight`) and a shared module (`b = a`), in both frameworks: torch's state dict
holds such a tensor under each name, as paddle's does; one slot, its other names `Slot.aliases`."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
import torch

from crossattn.check import check_spec
from crossattn.frameworks import adapter
from crossattn.model_pair import ModelPair
from crossattn.tolerances import tolerance_for
from weight_transfer.convert import convert


class TorchTied(torch.nn.Module):
    def __init__(self, share_module: bool = False) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 6)
        if share_module:
            self.b = self.a
        else:
            self.b = torch.nn.Linear(6, 6)
            self.b.weight = self.a.weight
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


class PaddleTied(paddle.nn.Layer):
    def __init__(self, share_module: bool = False) -> None:
        super().__init__()
        self.a = paddle.nn.Linear(6, 6)
        if share_module:
            self.b = self.a
        else:
            self.b = paddle.nn.Linear(6, 6)
            self.b.weight = self.a.weight
        self.out = paddle.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(paddle.tanh(self.b(paddle.tanh(self.a(x)))))


def _pair(share_module: bool) -> ModelPair:
    return ModelPair.from_factories(f"{__name__}:TorchTied", f"{__name__}:PaddleTied",
                                    {"share_module": share_module}, input_shape=(4, 6))


@pytest.mark.parametrize("share_module", [False, True])
def test_torch_slots_name_each_shared_tensor_once(share_module):
    own = adapter("torch").slots(TorchTied(share_module))
    assert "b.weight" not in own and own["a.weight"].aliases == ("b.weight",)
    assert ("b.bias" in own) is not share_module
    assert set(adapter("torch").state(TorchTied(share_module))) == set(own)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("share_module", [False, True])
def test_an_equal_pair_sharing_weights_passes(dtype, share_module):
    """A shared module ended in a traceback (load_state_dict missing `b.weight`); a tied weight was refused
    as `unexpected b.weight`."""
    cases = check_spec(_pair(share_module), dtype=dtype, tol=tolerance_for(dtype))
    assert cases and all(c.passed for c in cases), [c.worst for c in cases]


def test_a_lazy_load_keeps_the_tie():
    fw = adapter("torch")
    with fw.lazy():
        model = TorchTied()
    state = fw.state(TorchTied())
    fw.load_lazy(model, state)
    assert model.b.weight is model.a.weight


def test_convert_writes_each_name_the_framework_loads(tmp_path):
    pair = _pair(False)
    source = TorchTied()
    torch.save(source.state_dict(), tmp_path / "tied.pt")
    assert convert(tmp_path / "tied.pt", tmp_path / "tied.pdparams", pair).passed
    back = convert(tmp_path / "tied.pdparams", tmp_path / "back.pt", pair)
    assert back.passed
    model = TorchTied()
    model.load_state_dict(torch.load(tmp_path / "back.pt"), strict=True)
    assert np.array_equal(model.b.weight.detach().numpy(), source.a.weight.detach().numpy())
