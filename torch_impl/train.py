"""The PyTorch training loop; twin of paddle_impl/train.py (a diff shows only API differences).

The loop draws nothing: batch indices, augmentation indices and the learning
rate of every step come from crossattn.training, computed in numpy for both
frameworks. Images stay uint8 on the device; each batch is gathered, cast,
augmented, resized and normalised there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from crossattn import registry
from crossattn.conventions import as_paddle_holds
from crossattn.data import Dataset
from crossattn.errors import CrossattnError
from crossattn.init import initial_state
from crossattn.spec import Spec
from crossattn.training import guard
from crossattn.training.augment import CropFlip
from crossattn.training.config import TrainConfig
from torch_impl import adapter
from torch_impl.layers import bilinear_resize
from torch_impl import finite

FRAMEWORK = "torch"
CHANNELS_LAST_NOTE = "torch: model and inputs in channels_last (NHWC) memory format"
Step = tuple[np.ndarray, CropFlip | None, float]


def resolve_device(device: str) -> torch.device:
    """cpu, gpu (CUDA or a clear error) or auto (CUDA when present)."""
    has_gpu = torch.cuda.is_available()
    if device == "gpu" and not has_gpu:
        raise CrossattnError("--device gpu: torch sees no CUDA device (torch.cuda.is_available() is False: "
                             "a CPU-only build, no driver, or CUDA_VISIBLE_DEVICES hides every GPU)")
    return torch.device("cuda" if device in ("gpu", "auto") and has_gpu else "cpu")


def is_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and not is_gpu(device):
        raise CrossattnError("amp fp16 needs a GPU (float16 autocast with loss scaling is a CUDA feature); "
                             "on the CPU use amp: bf16 or amp: none")


def session() -> contextlib.AbstractContextManager:
    """Context a whole run executes in: paddle restarts its variable names; torch needs nothing."""
    return contextlib.nullcontext()


def build_model(spec: Spec, seed: int) -> torch.nn.Module:
    """The spec's twin with crossattn.init's default weights: the same numbers as the paddle twin."""
    model = registry.build(spec, FRAMEWORK)
    adapter.load_state(model, initial_state(adapter.slots(model), adapter.state(model), FRAMEWORK, seed, "default"))
    return model


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """adam: weight decay added to the gradient (L2, coupled), as paddle.optimizer.Adam does; adamw: decoupled.

    SGD's momentum and weight decay are rounded as paddle's Momentum holds them
    (conventions.as_paddle_holds); paddle's Adam applies its coefficients unrounded.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        # momentum 0 maps to paddle's plain SGD, which applies its weight decay unrounded
        decay = as_paddle_holds(config.weight_decay) if config.momentum > 0 else config.weight_decay
        return torch.optim.SGD(params, lr=config.lr, momentum=as_paddle_holds(config.momentum),
                               nesterov=config.nesterov, weight_decay=decay)
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                weight_decay=config.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean of (1-s) * NLL + s * mean over classes of -log p, written out so both twins compute the same."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the loss in float32
        logits = logits.float()
    log_probs = F.log_softmax(logits, dim=1)
    loss = -log_probs.gather(1, labels[:, None]).squeeze(1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * log_probs.mean(dim=1)
    return loss.mean()


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of every conv and linear layer for one image: outputs x weights feeding each output."""
    total = [0]

    def hook(module, inputs, output):
        per_output = int(np.prod(module.weight.shape[1:])) if adapter.layer_kind(module) == "conv" \
            else int(module.weight.shape[1])
        total[0] += int(output[0].numel()) * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if adapter.layer_kind(m) in ("conv", "linear") and getattr(m, "weight", None) is not None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros((1, *input_shape[1:]), dtype=parameter.dtype, device=parameter.device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total[0]


class Trainer:
    """Model, optimizer and the uint8 datasets on one device."""

    def __init__(self, spec: Spec, config: TrainConfig, device: str, train_set: Dataset, test_set: Dataset) -> None:
        self.config = config
        self.device = resolve_device(device)
        check_amp(config.amp, self.device)
        torch.manual_seed(config.seed)  # nothing here draws from it; a dropout layer would
        self.dtype = getattr(torch, config.dtype)
        self.model = build_model(spec, config.seed).to(device=self.device, dtype=self.dtype)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        self.train_images, self.train_labels = self._to_device(train_set)
        self.test_images, self.test_labels = self._to_device(test_set)
        shape = (1, config.channels, 1, 1)
        self.mean = torch.tensor(config.channel_mean(), dtype=self.dtype, device=self.device).reshape(shape)
        self.std = torch.tensor(config.channel_std(), dtype=self.dtype, device=self.device).reshape(shape)

    @property
    def device_name(self) -> str:
        return str(self.device)

    def _to_device(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(dataset.images).to(self.device), torch.from_numpy(dataset.labels).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def batch(self, images: torch.Tensor, indices: np.ndarray, aug: CropFlip | None) -> torch.Tensor:
        """Gather uint8 -> float -> crop/flip -> bilinear resize -> normalise, all on the device."""
        x = images.index_select(0, torch.from_numpy(indices).to(self.device)).to(self.dtype)
        if aug is not None:
            p = aug.padding
            x = F.pad(x, [p, p, p, p])
            rows = torch.from_numpy(aug.rows).to(self.device)[:, None, :, None]
            x = x.gather(2, rows.expand(-1, x.shape[1], -1, x.shape[3]))
            cols = torch.from_numpy(aug.cols).to(self.device)[:, None, None, :]
            x = x.gather(3, cols.expand(-1, x.shape[1], x.shape[2], -1))
        size = self.config.image_size
        if size is not None and tuple(x.shape[2:]) != (size, size):
            x = bilinear_resize(x, size, size, align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def train_epoch(self, steps: Iterable[Step], report: Callable[[int, float, float], None]) -> dict[str, float]:
        """One pass over `steps`; report(steps_done, mean loss, top-1) every log_every steps and at the end."""
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = done = 0
        for indices, aug, lr in steps:
            set_lr(self.optimizer, lr)
            x = self.batch(self.train_images, indices, aug)
            labels = self.train_labels.index_select(0, torch.from_numpy(indices).to(self.device))
            with self._autocast():
                logits = self.model(x)
            loss = smoothed_cross_entropy(logits, labels, self.config.label_smoothing)
            guard.check_step(done + 1, finite.loss_finite(loss))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                guard.check_step(done + 1, True, finite.grads_finite(self.model))
                self.optimizer.step()
            loss_sum += loss.detach().double() * len(indices)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(indices)
            done += 1
            if done % self.config.log_every == 0:
                report(done, loss_sum.item() / seen, correct.item() / seen)
        result = {"train_loss": loss_sum.item() / max(seen, 1), "train_top1": correct.item() / max(seen, 1)}
        if done % self.config.log_every:
            report(done, result["train_loss"], result["train_top1"])
        return result

    def predict(self, split: str, batches: Iterable[np.ndarray]) -> np.ndarray:
        """float32 logits of the split's images, in the order of `batches`."""
        images = self.test_images if split == "test" else self.train_images
        self.model.eval()
        outputs = []
        with torch.no_grad():
            for indices in batches:
                with self._autocast():
                    logits = self.model(self.batch(images, indices, None))
                outputs.append(logits.float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

    def parameters_and_macs(self) -> tuple[int, int]:
        size = self.config.image_size or int(self.train_images.shape[2])
        return count_parameters(self.model), count_macs(self.model, (1, self.config.channels, size, size))

    def state(self) -> dict[str, np.ndarray]:
        return adapter.state(self.model)

    def save(self, path: str, epoch: int, step: int) -> None:
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                   "step": step, "framework": FRAMEWORK}
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        torch.save(payload, path)

    def load(self, path: str) -> tuple[int, int]:
        payload = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        return int(payload["epoch"]), int(payload["step"])
