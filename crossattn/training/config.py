"""The training config: one frozen dataclass, loaded from YAML, read by both twin loops.

Errors name the file, the key and its line, in the style of spec files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from crossattn.errors import OptionError, SpecError, shown
from crossattn.options import Options, parse_options, positive, require
from crossattn.spec import LineDict, line_of, read_yaml, resolve_named

TRAIN_SPECS_DIR = Path(__file__).resolve().parent.parent / "specs" / "train"
DATASET_CHANNELS = {"cifar10": 3, "mnist": 1}
IMAGE_SIDE = {"cifar10": 32, "mnist": 28}
TEXT_KEYS = ("description",)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Options):
    """Every knob of a run; the twins translate each into their framework's API the same way."""

    # optimiser: adam/adamw (betas, epsilon) or sgd (momentum, nesterov)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    #: adam: L2 added to the gradient (coupled) in both frameworks; adamw: decoupled; sgd: L2 added to the gradient
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    # learning-rate schedule, evaluated per step
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: int = 0
    #: step schedule: multiply by step_gamma every step_epochs epochs
    step_epochs: int = 10
    step_gamma: float = 0.1
    #: cosine schedule: the floor it decays to
    min_lr: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    #: drop the last incomplete training batch (seed 004 does)
    drop_last: bool = True
    eval_batch_size: int = 256
    #: images are resized on the device to image_size x image_size (bilinear, half-pixel); null keeps the size
    image_size: int | None = None
    #: per-channel (x - mean) / std on 0..255 values; one value applies to every channel
    mean: tuple[float, ...] = (127.5,)
    std: tuple[float, ...] = (127.5,)
    # augmentation (off by default): random crop from a zero-padded image, horizontal flip
    augment: bool = False
    crop_padding: int = 4
    hflip: bool = True
    label_smoothing: float = 0.0
    #: how BatchNorm folds batches into its running statistics, the same in both frameworks:
    #: torch (unbiased variance, momentum 0.1), paddle (biased, 0.9 held in float32), or native
    #: (each framework its own: eval-mode results then differ between them); unset: the spec's
    #: `bn_stats`, else torch (a run records the rule it resolved to)
    bn_stats: Literal["torch", "paddle", "native"] | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    #: float64 makes both frameworks train in double precision: slow, but their runs then agree
    #: step by step to rounding, which proves two training set-ups the same before a long run
    dtype: Literal["float32", "float64"] = "float32"
    #: torch: NHWC memory format for model and inputs; paddle: ignored (its twins are built NCHW)
    channels_last: bool = False
    seed: int = 0
    dataset: Literal["cifar10", "mnist", "synthetic"] = "cifar10"
    #: shape of the synthetic data (like cifar10 or mnist) and its split sizes
    synthetic_like: Literal["cifar10", "mnist"] = "cifar10"
    synthetic_train: int = 5000
    synthetic_test: int = 1000
    data_dir: str | None = None
    download: bool = False
    #: a progress line every log_every training steps (and at each epoch's end)
    log_every: int = 50
    #: checkpoints kept in the run directory (the newest ones)
    keep_checkpoints: int = 2

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "step_epochs", "log_every", "keep_checkpoints",
                    "synthetic_train", "synthetic_test"):
            positive(getattr(self, key), key)
        positive(self.image_size, "image_size")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.min_lr >= 0, "min_lr", f"must be >= 0, got {self.min_lr}")
        require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
                f"must lie in [0, epochs) = [0, {self.epochs}), got {self.warmup_epochs}")
        require(0 < self.step_gamma <= 1, "step_gamma", f"must lie in (0, 1], got {self.step_gamma}")
        require(self.adam_epsilon > 0, "adam_epsilon", f"must be > 0, got {self.adam_epsilon}")
        for key in ("adam_beta1", "adam_beta2", "momentum"):
            value = getattr(self, key)
            require(0 <= value < 1, key, f"must lie in [0, 1), got {value}")
        require(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov",
                "needs optimizer sgd with momentum > 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        side = min(IMAGE_SIDE.values())
        require(0 <= self.crop_padding <= side, "crop_padding", f"must lie in [0, {side}], got {self.crop_padding}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.dtype == "float32" or self.amp == "none", "dtype",
                f"float64 training runs without mixed precision; set amp: none (got amp: {self.amp})")
        require(len(self.mean) > 0, "mean", "give one value or one per channel")
        require(len(self.std) == len(self.mean), "std", f"give as many values as mean ({len(self.mean)})")
        for i, s in enumerate(self.std):
            require(s > 0, f"std[{i}]", f"must be > 0, got {s}")
        channels = self.channels
        require(len(self.mean) in (1, channels), "mean",
                f"{self.data_kind} images have {channels} channel(s); give 1 or {channels} values, "
                f"got {len(self.mean)}")

    @property
    def data_kind(self) -> str:
        """Which image shape the data has: cifar10 or mnist."""
        return self.synthetic_like if self.dataset == "synthetic" else self.dataset

    @property
    def channels(self) -> int:
        return DATASET_CHANNELS[self.data_kind]

    def channel_mean(self) -> tuple[float, ...]:
        return self.mean * self.channels if len(self.mean) == 1 else self.mean

    def channel_std(self) -> tuple[float, ...]:
        return self.std * self.channels if len(self.std) == 1 else self.std

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (command-line overrides), validated again."""
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        data = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return yaml.safe_dump(data, sort_keys=False)


def parse_train_config(raw: Any, file: str = "<train config>") -> TrainConfig:
    """Validate a loaded YAML mapping; errors point at the key's line."""
    if raw is None:  # an empty, comment-only or `null` file: most likely cut short or the wrong file
        raise SpecError(file, None, None, "the file holds no settings (empty, only comments, or null); a training "
                                          "config names at least one, e.g. `epochs: 30`, and the rest default")
    if not isinstance(raw, Mapping):
        raise SpecError(file, None, getattr(raw, "line", None), "expected a mapping of training options")
    options = {k: v for k, v in raw.items() if k not in TEXT_KEYS}
    if not options:
        raise SpecError(file, None, getattr(raw, "line", None),
                        "the file names no training setting; give at least one, e.g. `epochs: 30`, and the rest "
                        "default")
    for key in TEXT_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise SpecError(file, key, line_of(raw, [key]), f"expected a string, got {shown(raw[key])}")
    try:
        return parse_options(TrainConfig, options, "a training config")  # type: ignore[return-value]
    except OptionError as exc:
        path = exc.key.split("[", 1)[0].split(".")
        raise SpecError(file, exc.key, line_of(raw, path), exc.message) from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate one training config file."""
    known = ", ".join(p.stem for p in sorted(TRAIN_SPECS_DIR.glob("*.yaml")))
    return parse_train_config(read_yaml(path, f"shipped training configs: {known}"), str(path))


def resolve_train_config(arg: str) -> Path:
    """A path, or the name of a shipped training config (crossattn/specs/train/NAME.yaml)."""
    return resolve_named(arg, TRAIN_SPECS_DIR, "training config")
