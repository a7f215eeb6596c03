"""The memory bound's forward count: its shortcuts for ops whose meta kernels are Python give torch's own counts."""

from __future__ import annotations

import subprocess
import sys

import torch

from crossattn import bounds
from crossattn.spec import load_spec, resolve_spec


class _Mixed(torch.nn.Module):
    """Ops the count answers itself (pointwise, in place, reductions, Linear, LayerNorm) beside ops
    it leaves to torch (convolutions, comparisons, where, cat, interpolation)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.norm = torch.nn.LayerNorm([4, 12, 12])
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y.mul_(2.0).add_(1.0)
        y = torch.sigmoid(y) * y + y.mean(dim=(2, 3), keepdim=True)
        mask = y > 0.5
        y = torch.where(mask, y, -y)
        y = torch.cat([y, y.sum(dim=1, keepdim=True).expand_as(y)], 1)[:, :8]
        y = self.norm(self.up(y))
        y = torch.nn.functional.interpolate(y, scale_factor=0.5, mode="bilinear")
        return self.fc(y.mean(dim=(2, 3)))


def _counted_by_torch(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Plain(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            Plain.total += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            return out

    with torch.device("meta"), torch.no_grad():
        x = torch.empty(shape)
        with Plain():
            model(x)
    return Plain.total


def test_the_count_equals_torchs_own_meta_kernels():
    with torch.device("meta"):
        model = _Mixed()
    shape = (2, 3, 6, 6)
    counted = bounds._forward_elements(torch, model, shape, "mixed", load_spec(resolve_spec("se_conv")))
    assert counted > 0
    assert counted == _counted_by_torch(model, shape)


def test_a_full_size_models_count_needs_no_torch_dynamo():
    """torch wraps a dispatch mode's handler and its Python meta kernels in dynamo's disable, whose first call
    imports torch._dynamo (about a second of the parent's start): the count avoids both for the shipped models."""
    code = ("import sys, torch\n"
            "from crossattn.bounds import meta_footprint\n"
            "from crossattn.spec import load_spec, resolve_spec\n"
            "for name in ('gcnet_seg', 'se_resnet50'):\n"
            "    spec = load_spec(resolve_spec(name))\n"
            "    assert meta_footprint(spec, spec.input_shape)[1] > 0\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
