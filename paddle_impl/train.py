"""The PaddlePaddle training loop; twin of torch_impl/train.py (a diff shows only API differences).

The loop draws nothing: batch indices, augmentation indices and the learning
rate of every step come from crossattn.training, computed in numpy for both
frameworks. Images stay uint8 on the device; each batch is gathered, cast,
augmented, resized and normalised there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import paddle
import paddle.nn.functional as F

from crossattn import registry
from crossattn.bn_stats import bn_stats_rule
from crossattn.data import Dataset
from crossattn.dropout_calls import DropoutCalls
from crossattn.errors import CrossattnError
from crossattn.init import initial_state
from crossattn.spec import Spec
from crossattn.training import guard
from crossattn.training.augment import CropFlip
from crossattn.training.config import TrainConfig
from weight_transfer import optimizer_state
from paddle_impl import adapter
from paddle_impl.layers import apply_bn_stats, bilinear_resize
from paddle_impl import finite
from paddle_impl.float64_casts import float64_kept
from paddle_impl.functional_dropout import held_dropout_calls

FRAMEWORK = "paddle"
CHANNELS_LAST_NOTE = "paddle: channels_last is ignored (the twins are built NCHW; paddle sets layout per layer)"
Step = tuple[np.ndarray, CropFlip | None, float]


def resolve_device(device: str) -> str:
    """cpu, gpu (CUDA or a clear error) or auto (CUDA when present)."""
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "gpu" and not has_gpu:
        raise CrossattnError("--device gpu: paddle sees no CUDA device (a CPU-only paddlepaddle build, no "
                             "driver, or CUDA_VISIBLE_DEVICES hides every GPU; GPUs need paddlepaddle-gpu)")
    chosen = "gpu:0" if device in ("gpu", "auto") and has_gpu else "cpu"
    paddle.set_device(chosen)
    return chosen


def is_gpu(device) -> bool:
    return "gpu" in str(device).lower()


def check_amp(amp: str, device) -> None:
    if amp == "fp16" and not is_gpu(device):
        raise CrossattnError("amp fp16 needs a GPU (float16 autocast with loss scaling is a CUDA feature); "
                             "on the CPU use amp: none (paddle: bf16 also needs a GPU)")
    if amp == "bf16" and not is_gpu(device):
        raise CrossattnError("amp bf16 on the CPU is torch only: paddle's CPU autocast is not supported by "
                             "crossattn; use amp: none, or a GPU")


def session() -> contextlib.AbstractContextManager:
    """Context a whole run executes in: paddle restarts its variable names; torch needs nothing.

    Paddle keys optimizer state by generated variable names (conv2d_0.w_0_moment1_0);
    building every run under a fresh name scope makes a checkpoint loadable in
    any later process or in the same one.
    """
    return paddle.utils.unique_name.guard()


def build_model(spec: Spec, seed: int) -> paddle.nn.Layer:
    """The spec's twin with crossattn.init's default weights: the same numbers as the torch twin."""
    model = registry.build(spec, FRAMEWORK)
    adapter.load_state(model, initial_state(adapter.slots(model), adapter.state(model), FRAMEWORK, seed, "default"))
    return model


def make_optimizer(model: paddle.nn.Layer, config: TrainConfig) -> paddle.optimizer.Optimizer:
    """adam: weight decay added to the gradient (L2, coupled), as torch.optim.Adam does; adamw: decoupled."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        if config.momentum == 0:
            return paddle.optimizer.SGD(learning_rate=config.lr, parameters=params, weight_decay=decay)
        return paddle.optimizer.Momentum(learning_rate=config.lr, momentum=config.momentum, parameters=params,
                                         use_nesterov=config.nesterov, weight_decay=decay)
    if config.optimizer == "adamw":
        return paddle.optimizer.AdamW(learning_rate=config.lr, beta1=config.adam_beta1, beta2=config.adam_beta2,
                                      epsilon=config.adam_epsilon, parameters=params,
                                      weight_decay=config.weight_decay)
    return paddle.optimizer.Adam(learning_rate=config.lr, beta1=config.adam_beta1, beta2=config.adam_beta2,
                                 epsilon=config.adam_epsilon, parameters=params, weight_decay=decay)


def native_optimizer_state(build: Callable[[str], paddle.nn.Layer],
                           opt: optimizer_state.OptimizerState) -> tuple[dict, dict[str, str]]:
    """`opt` keyed as the optimizer of a model built first in a fresh process (or name scope) names it."""
    with paddle.utils.unique_name.guard():
        model = build(FRAMEWORK)
        names = {name: p.name for name, p in model.named_parameters() if not p.stop_gradient}
    return optimizer_state.paddle_state_dict(opt, names), names


def set_lr(optimizer: paddle.optimizer.Optimizer, lr: float) -> None:
    optimizer.set_lr(lr)


def smoothed_cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor, smoothing: float) -> paddle.Tensor:
    """Mean of (1-s) * NLL + s * mean over classes of -log p, written out so both twins compute the same."""
    if logits.dtype in (paddle.float16, paddle.bfloat16):  # mixed precision: the loss in float32
        logits = logits.astype("float32")
    log_probs = F.log_softmax(logits, axis=1)
    loss = -paddle.take_along_axis(log_probs, labels[:, None], axis=1).squeeze(1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * log_probs.mean(axis=1)
    return loss.mean()


def train_step(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer, x: paddle.Tensor,
               labels: paddle.Tensor, lr: float, smoothing: float = 0.0,
               autocast: contextlib.AbstractContextManager | None = None,
               scaler: paddle.amp.GradScaler | None = None,
               guard_step: int | None = None) -> tuple[paddle.Tensor, paddle.Tensor]:
    """One optimizer step on a batch: forward, loss, backward, step; the loop's and `crossattn align`'s.

    With `guard_step` (the step's number in its epoch) a non-finite loss or gradient stops the run
    before the optimizer moves (crossattn.training.guard)."""
    set_lr(optimizer, lr)
    with autocast or contextlib.nullcontext():
        logits = model(x)
    loss = smoothed_cross_entropy(logits, labels, smoothing)
    if guard_step is not None:
        guard.check_step(guard_step, finite.loss_finite(loss))
    optimizer.clear_grad(set_to_zero=False)
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


def count_parameters(model: paddle.nn.Layer) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient))


def count_macs(model: paddle.nn.Layer, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of every conv and linear layer for one image: outputs x weights feeding each output."""
    total = [0]

    def hook(layer, inputs, output):
        per_output = int(np.prod(layer.weight.shape[1:])) if adapter.layer_kind(layer) == "conv" \
            else int(layer.weight.shape[0])
        total[0] += int(np.prod(output[0].shape)) * per_output

    handles = [m.register_forward_post_hook(hook) for _, m in model.named_sublayers(include_self=True)
               if adapter.layer_kind(m) in ("conv", "linear") and getattr(m, "weight", None) is not None]
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            parameter = model.parameters()[0]
            model(paddle.zeros((1, *input_shape[1:]), dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train() if was_training else model.eval()
    return total[0]


class Trainer:
    """Model, optimizer and the uint8 datasets on one device."""

    def __init__(self, spec: Spec, config: TrainConfig, device: str, train_set: Dataset, test_set: Dataset) -> None:
        self.config = config
        self.device = resolve_device(device)
        check_amp(config.amp, self.device)
        paddle.seed(config.seed)  # nothing here draws from it; a dropout layer would
        self.dtype = config.dtype
        self.model = build_model(spec, config.seed)
        self.model.to(dtype=self.dtype)
        apply_bn_stats(self.model, bn_stats_rule(config.bn_stats, spec))
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**16) if config.amp == "fp16" else None
        self.autocast_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(config.amp)
        self.train_images, self.train_labels = self._to_device(train_set)
        self.test_images, self.test_labels = self._to_device(test_set)
        shape = (1, config.channels, 1, 1)
        self.mean = paddle.to_tensor(config.channel_mean(), dtype=self.dtype).reshape(shape)
        self.std = paddle.to_tensor(config.channel_std(), dtype=self.dtype).reshape(shape)

    @property
    def device_name(self) -> str:
        return str(self.device)

    def _to_device(self, dataset: Dataset) -> tuple[paddle.Tensor, paddle.Tensor]:
        return paddle.to_tensor(dataset.images), paddle.to_tensor(dataset.labels)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(dtype=self.autocast_dtype, level="O1")

    def batch(self, images: paddle.Tensor, indices: np.ndarray, aug: CropFlip | None) -> paddle.Tensor:
        """Gather uint8 -> float -> crop/flip -> bilinear resize -> normalise, all on the device."""
        # paddle.index_select has no uint8 kernel; gather has
        x = paddle.gather(images, paddle.to_tensor(indices), axis=0).astype(self.dtype)
        if aug is not None:
            p = aug.padding
            x = F.pad(x, [p, p, p, p])
            rows = paddle.to_tensor(aug.rows)[:, None, :, None]
            x = paddle.take_along_axis(x, rows, axis=2, broadcast=True)
            cols = paddle.to_tensor(aug.cols)[:, None, None, :]
            x = paddle.take_along_axis(x, cols, axis=3, broadcast=True)
        size = self.config.image_size
        if size is not None and tuple(x.shape[2:]) != (size, size):
            x = bilinear_resize(x, size, size, align_corners=False)
        x = (x - self.mean) / self.std
        return x

    def train_epoch(self, steps: Iterable[Step], report: Callable[[int, float, float], None]) -> dict[str, float]:
        """One pass over `steps`; report(steps_done, mean loss, top-1) every log_every steps and at the end."""
        self.model.train()
        loss_sum = paddle.zeros([], dtype="float64")
        correct = paddle.zeros([], dtype="int64")
        seen = done = 0
        for indices, aug, lr in steps:
            x = self.batch(self.train_images, indices, aug)
            labels = paddle.gather(self.train_labels, paddle.to_tensor(indices), axis=0)
            loss, logits = train_step(self.model, self.optimizer, x, labels, lr, self.config.label_smoothing,
                                      self._autocast(), self.scaler, guard_step=done + 1)
            loss_sum += loss.detach().astype("float64") * len(indices)
            correct += (logits.detach().argmax(axis=1) == labels).astype("int64").sum()
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
        with paddle.no_grad():
            for indices in batches:
                with self._autocast():
                    logits = self.model(self.batch(images, indices, None))
                outputs.append(logits.astype("float64" if logits.dtype == paddle.float64 else "float32").numpy())
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
                   optimizer_state.LR_KEY: float(self.optimizer.get_lr())}
        if self.scaler is not None:
            payload["scaler"] = self.scaler.state_dict()
        paddle.save(payload, path)

    def load(self, path: str) -> tuple[int, int]:
        payload = paddle.load(path)
        self.model.set_state_dict(payload["model"])
        self.optimizer.set_state_dict(payload["optimizer"])
        if self.scaler is not None and "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
        return int(payload["epoch"]), int(payload["step"])

    def parameter_names(self) -> dict[str, str]:
        """Structured name -> variable name of each trainable parameter (how its optimizer state is keyed)."""
        return {name: p.name for name, p in self.model.named_parameters() if not p.stop_gradient}

    def load_translated(self, model_state: dict[str, np.ndarray], opt: optimizer_state.OptimizerState) -> None:
        """Weights and optimizer state carried over from the other framework (already in paddle's form)."""
        adapter.load_state(self.model, model_state)
        load_optimizer_record(self.model, self.optimizer, opt)

    def dropout_layers(self) -> list[str]:
        return [name for name, m in self.model.named_sublayers()
                if isinstance(m, (paddle.nn.Dropout, paddle.nn.Dropout2D, paddle.nn.Dropout3D)) and m.p > 0]


# --------------------------------------------------------------------------- for crossattn align


def step_arrays(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer, x: np.ndarray, labels: np.ndarray,
                lr: float, dropouts: DropoutCalls | None = None) -> float:
    """train_step on numpy inputs (`crossattn align`'s), dropout called as a function held off (into
    `dropouts`); the loss as a float."""
    with held_dropout_calls(DropoutCalls() if dropouts is None else dropouts), \
            float64_kept(set(), x.dtype == np.float64):
        loss, _ = train_step(model, optimizer, paddle.to_tensor(x), paddle.to_tensor(labels), lr)
    return float(loss.detach().astype("float64").item())


def optimizer_record(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer, config: TrainConfig,
                     step: int) -> optimizer_state.OptimizerState:
    """The live optimizer's state as crossattn reads a checkpoint's (its own settings' traces not held to the
    config's: align shows a differing setting as drift)."""
    names = {name: p.name for name, p in model.named_parameters() if not p.stop_gradient}
    content = {"optimizer": optimizer.state_dict(), "step": step, optimizer_state.NAMES_KEY: names,
               optimizer_state.HYPER_KEY: optimizer_state.hyperparameters(config)}
    return optimizer_state.read(optimizer_state.numpy_tree(content), FRAMEWORK, "the running optimizer", live=True)


def load_optimizer_record(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer,
                          opt: optimizer_state.OptimizerState) -> None:
    """`opt` (in paddle's naming and layout) into the live optimizer: moments and step count."""
    names = {name: p.name for name, p in model.named_parameters() if not p.stop_gradient}
    optimizer.set_state_dict(optimizer_state.paddle_state_dict(opt, names))


def set_train_mode(model, train: bool) -> list[str]:
    """Train or eval mode, dropout always off (identity); returns the dropout layers so held."""
    return list(adapter.set_train_mode(model, train))
