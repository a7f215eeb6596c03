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
from crossattn.bn_stats import bn_stats_rule
from crossattn.conventions import as_paddle_holds
from crossattn.data import Dataset
from crossattn.dropout_calls import DropoutCalls
from crossattn.errors import CrossattnError
from crossattn.init import initial_state
from crossattn.spec import Spec
from crossattn.training import guard
from crossattn.training.augment import CropFlip
from crossattn.training.config import TrainConfig
from weight_transfer import optimizer_state
from torch_impl import adapter
from torch_impl.comparison_calls import comparison_calls
from torch_impl.layers import apply_bn_stats, bilinear_resize
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


def native_optimizer_state(build: Callable[[str], torch.nn.Module],
                           opt: optimizer_state.OptimizerState) -> tuple[dict, list[str]]:
    """`opt` as the state_dict of the optimizer make_optimizer builds for the model."""
    model = build(FRAMEWORK)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    groups = make_optimizer(model, TrainConfig(**opt.hyper)).state_dict()["param_groups"]
    if opt.lr is not None:  # the rate the last step took, where a scheduler of the user's goes on from
        for group in groups:
            group["lr"] = opt.lr
    return optimizer_state.torch_state_dict(opt, names, groups), names


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


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
               lr: float, smoothing: float = 0.0, autocast: contextlib.AbstractContextManager | None = None,
               scaler: torch.amp.GradScaler | None = None,
               guard_step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: forward, loss, backward, step; the loop's and `crossattn align`'s.

    With `guard_step` (the step's number in its epoch) a non-finite loss or gradient stops the run
    before the optimizer moves (crossattn.training.guard)."""
    set_lr(optimizer, lr)
    with autocast or contextlib.nullcontext():
        logits = model(x)
    loss = smoothed_cross_entropy(logits, labels, smoothing)
    if guard_step is not None:
        guard.check_step(guard_step, finite.loss_finite(loss))
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # the scaler skips steps whose scaled gradients overflow
        scaler.update()
    else:
        loss.backward()
        if guard_step is not None:
            guard.check_step(guard_step, True, finite.grads_finite(model))
        optimizer.step()
    return loss, logits


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
        apply_bn_stats(self.model, bn_stats_rule(config.bn_stats, spec))
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
            x = self.batch(self.train_images, indices, aug)
            labels = self.train_labels.index_select(0, torch.from_numpy(indices).to(self.device))
            loss, logits = train_step(self.model, self.optimizer, x, labels, lr, self.config.label_smoothing,
                                      self._autocast(), self.scaler, guard_step=done + 1)
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
        """Logits (float64 in float64 runs, else float32) of the split's images, in the order of `batches`."""
        images = self.test_images if split == "test" else self.train_images
        self.model.eval()
        outputs = []
        with torch.no_grad():
            for indices in batches:
                with self._autocast():
                    logits = self.model(self.batch(images, indices, None))
                outputs.append(logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
                               .cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

    def parameters_and_macs(self) -> tuple[int, int]:
        size = self.config.image_size or int(self.train_images.shape[2])
        return count_parameters(self.model), count_macs(self.model, (1, self.config.channels, size, size))

    def state(self) -> dict[str, np.ndarray]:
        return adapter.state(self.model)

    def save(self, path: str, epoch: int, step: int) -> None:
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                   "step": step, "framework": FRAMEWORK, optimizer_state.NAMES_KEY: self.parameter_names(),
                   optimizer_state.HYPER_KEY: optimizer_state.hyperparameters(self.config),
                   optimizer_state.LR_KEY: float(self.optimizer.param_groups[0]["lr"])}
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

    def parameter_names(self) -> list[str]:
        """The trainable parameters in the optimizer's order (how its state is indexed)."""
        return [name for name, p in self.model.named_parameters() if p.requires_grad]

    def load_translated(self, model_state: dict[str, np.ndarray], opt: optimizer_state.OptimizerState) -> None:
        """Weights and optimizer state carried over from the other framework (already in torch's form)."""
        adapter.load_state(self.model, model_state)
        load_optimizer_record(self.model, self.optimizer, opt)

    def dropout_layers(self) -> list[str]:
        return [name for name, m in self.model.named_modules()
                if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


# --------------------------------------------------------------------------- for crossattn align


def step_arrays(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: np.ndarray, labels: np.ndarray,
                lr: float, dropouts: DropoutCalls | None = None) -> float:
    """train_step on numpy inputs (`crossattn align`'s), under check's torch function mode: constants paddle
    holds in float32 take that value (`torch_impl.paddle_constants`), dropout called as a function is held off
    (into `dropouts`); the loss as a float."""
    device = next(model.parameters()).device
    with comparison_calls(dropouts=dropouts, float64=x.dtype == np.float64):
        loss, _ = train_step(model, optimizer, torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device),
                             lr)
    return float(loss.detach().double())


def optimizer_record(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                     step: int) -> optimizer_state.OptimizerState:
    """The live optimizer's state as crossattn reads a checkpoint's (its own settings' traces not held to the
    config's: align shows a differing setting as drift)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    content = {"optimizer": optimizer.state_dict(), "step": step, optimizer_state.NAMES_KEY: names,
               optimizer_state.HYPER_KEY: optimizer_state.hyperparameters(config)}
    return optimizer_state.read(optimizer_state.numpy_tree(content), FRAMEWORK, "the running optimizer", live=True)


def load_optimizer_record(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          opt: optimizer_state.OptimizerState) -> None:
    """`opt` (in torch's naming and layout) into the live optimizer: moments and step count."""
    device = next(model.parameters()).device
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    native = optimizer_state.torch_state_dict(opt, names, optimizer.state_dict()["param_groups"])
    # np.array, not np.ascontiguousarray: Adam's 0-d step count must stay 0-d to be read back
    native["state"] = {i: {k: torch.from_numpy(np.array(v, order="C")).to(device) for k, v in entry.items()}
                       for i, entry in native["state"].items()}
    optimizer.load_state_dict(native)


def set_train_mode(model, train: bool) -> list[str]:
    """Train or eval mode, dropout always off (identity); returns the dropout layers so held."""
    return list(adapter.set_train_mode(model, train))
