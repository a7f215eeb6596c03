"""The framework-neutral driver: data, the per-step plan, epochs, metrics, checkpoints, resume.

The plan of an epoch (batch indices from crossattn.data.iterate_batches,
crop/flip indices from crossattn.training.augment, the learning rate from
crossattn.training.schedule) is a function of (seed, epoch) alone, so both
frameworks and a resumed run replay exactly the same steps.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crossattn.data import Dataset, iterate_batches, load_cifar10, load_mnist, make_synthetic, num_batches
from crossattn.atomic import atomic_write_text
from crossattn.bounds import require_training_fits
from crossattn.errors import CrossattnError, OptionError
from crossattn.frameworks import require
from crossattn.spec import Spec, load_spec
from crossattn.training import guard
from crossattn.training import run_dir as runs
from crossattn.training import switch
from weight_transfer.integrity import DamagedCheckpoint
from crossattn.training.augment import CropFlip, crop_flip
from crossattn.bn_stats import bn_stats_rule
from crossattn.training.config import TrainConfig, load_train_config
from crossattn.training.metrics import read_jsonl, topk_correct, write_metrics
from crossattn.training.schedule import lr_at

Log = Callable[[str], None]


def load_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """(train, test) uint8 splits named by the config."""
    if config.dataset == "synthetic":
        return make_synthetic(config.synthetic_like, config.synthetic_train, config.synthetic_test, config.seed)
    loader = load_cifar10 if config.dataset == "cifar10" else load_mnist
    return (loader(config.data_dir, "train", download=config.download),
            loader(config.data_dir, "test", download=config.download))


def twin(framework: str):
    """torch_impl.train or paddle_impl.train."""
    require(framework)
    return importlib.import_module(f"{framework}_impl.train")


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    count = num_batches(n_train, config.batch_size, config.drop_last)
    if count == 0:
        raise CrossattnError(f"the training split has {n_train} images, fewer than batch_size {config.batch_size} "
                             f"with drop_last; lower batch_size or set drop_last: false")
    return count


def epoch_plan(config: TrainConfig, train: Dataset, epoch: int) -> Iterator[tuple[np.ndarray, CropFlip | None, float]]:
    """(indices, crop/flip, lr) of every step of 0-based `epoch`, identical for both frameworks."""
    per_epoch = steps_per_epoch(config, len(train))
    _, _, height, width = train.images.shape
    batches = iterate_batches(len(train), config.batch_size, True, config.seed, epoch, config.drop_last)
    for b, indices in enumerate(batches):
        aug = crop_flip(len(indices), height, width, config.crop_padding, config.hflip, config.seed, epoch, b) \
            if config.augment else None
        yield indices, aug, lr_at(config, epoch * per_epoch + b, per_epoch)


def evaluate(trainer: Any, config: TrainConfig, test: Dataset) -> dict[str, float]:
    """Loss (unsmoothed cross-entropy, float64 from the logits), top-1 and top-5 on the test split."""
    batches = list(iterate_batches(len(test), config.eval_batch_size, False, config.seed, 0, False))
    logits = trainer.predict("test", batches).astype(np.float64)
    labels = test.labels
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_norm - shifted[np.arange(len(labels)), labels])) if len(labels) else float("nan")
    hits = topk_correct(logits, labels, (1, 5))
    n = max(len(labels), 1)
    return {"val_loss": loss, "val_top1": hits[1] / n, "val_top5": hits[5] / n}


class Progress:
    """Plain-text progress lines: loss, accuracy, images/s and ETA for the run."""

    def __init__(self, log: Log, config: TrainConfig, per_epoch: int, first_epoch: int) -> None:
        self.log, self.config, self.per_epoch = log, config, per_epoch
        self.remaining_steps = (config.epochs - first_epoch) * per_epoch
        self.run_started = time.perf_counter()
        self.steps_before = 0
        self.epoch = 0
        self.epoch_started = self.run_started

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.epoch_started = epoch, time.perf_counter()

    def __call__(self, done: int, loss: float, top1: float) -> None:
        now = time.perf_counter()
        elapsed = now - self.epoch_started
        rate = done * self.config.batch_size / elapsed if elapsed > 0 else float("nan")
        run_done = self.steps_before + done
        per_step = (now - self.run_started) / run_done if run_done else 0.0
        eta = per_step * (self.remaining_steps - run_done)
        self.log(f"epoch {self.epoch + 1}/{self.config.epochs} step {done}/{self.per_epoch} loss {loss:.4f} "
                 f"top1 {top1:.4f} {rate:.1f} img/s ETA {_clock(eta)}")

    def end_epoch(self) -> float:
        self.steps_before += self.per_epoch
        return time.perf_counter() - self.epoch_started


def _set_aside(unreadable: list[Path], log: Log) -> None:
    """Rename checkpoints newer than the one loaded that did not read back to `NAME.unreadable`: kept for the
    user, out of the rotation (which kept them as the newest and pruned the good ones) and never loaded."""
    for path in unreadable:
        aside = path.with_name(path.name + ".unreadable")
        try:
            os.replace(path, aside)
        except OSError as exc:
            log(f"warning: could not set {path} aside ({exc}); remove it before the next resume")
        else:
            log(f"note: the unreadable {path.name} is kept as {aside.name}, out of the checkpoint rotation")


def _load_newest_readable(trainer: Any, run: Path, log: Log, framework: str, config: TrainConfig) -> int:
    """Load the newest checkpoint that reads back; an unreadable one (cut short by a crash) is skipped.

    A checkpoint of the other framework (the run continues after a switch) is translated.
    """
    found = runs.list_checkpoints(run)
    skipped: list[Path] = []
    for epoch, path in reversed(found):
        source = runs.framework_of_checkpoint(path)
        try:
            runs.verify_checkpoint(path)
            if source != framework:
                loaded, _ = switch.load_foreign(trainer, path, source, framework, config)
                log(f"continuing in {framework} from {source}'s {path.name}: weights, BatchNorm statistics and "
                    f"optimizer state translated")
            else:
                loaded, _ = trainer.load(str(path))
            _set_aside(skipped, log)
            return loaded
        except DamagedCheckpoint as exc:
            log(f"warning: cannot read checkpoint {path} ({exc}); trying an older one")
            skipped.append(path)
        except CrossattnError as exc:
            if source != framework and path.is_file() and "not a readable" not in str(exc):
                raise  # a whole checkpoint the switch refuses (an optimizer it cannot translate): say why
            log(f"warning: cannot read checkpoint {path} ({exc}); trying an older one")
            skipped.append(path)
        except Exception as exc:  # noqa: BLE001 - each framework raises its own types for a damaged file
            log(f"warning: cannot read checkpoint {path} ({type(exc).__name__}: {exc}); trying an older one")
            skipped.append(path)
    if found:
        raise CrossattnError(f"cannot resume {run}: none of its checkpoints ({', '.join(p.name for _, p in found)}) "
                             f"reads back; start a new run")
    return 0


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    info: dict[str, Any]
    trainer: Any = None


def check_fits_data(spec: Spec, config: TrainConfig) -> None:
    """The model must classify images shaped like the dataset's, into at least its classes."""
    where = spec.path or spec.name
    options = spec.options
    if not type(options).image_classifier:
        raise CrossattnError(f"{where}: `crossattn train` trains image classifiers (resnet_ablation, se_resnet, "
                             f"mnist_non_local); `{spec.type}` is not one")
    dataset = config.data_kind if config.dataset == "synthetic" else config.dataset
    if options.in_channels != config.channels:
        raise CrossattnError(f"{where}, key `options.in_channels`: the model takes {options.in_channels}-channel "
                             f"images but {dataset} images have {config.channels}")
    if options.num_classes < 10:
        raise CrossattnError(f"{where}, key `options.num_classes`: {dataset} has 10 classes, the model "
                             f"scores {options.num_classes}")


def train(spec_path: str | os.PathLike, config: TrainConfig, framework: str, device: str,
          run_dir: str | os.PathLike, log: Log = print, stop_after: int | None = None,
          datasets: tuple[Dataset, Dataset] | None = None) -> RunResult:
    """A fresh run in `run_dir`; `stop_after` ends it after that many epochs (continue with resume_run)."""
    spec = load_spec(spec_path)
    config = config.replace(bn_stats=bn_stats_rule(config.bn_stats, spec))  # recorded in the run's config
    check_fits_data(spec, config)
    require_training_fits(spec, config)
    module = twin(framework)  # an unusable device or amp setting fails before the run directory is made
    module.check_amp(config.amp, module.resolve_device(device))
    info = {"framework": framework, "spec": spec.name, "spec_type": spec.type, "device_requested": device}
    datasets = datasets or load_datasets(config)  # missing data fails before the run directory exists
    created = not Path(run_dir).exists()
    run = runs.prepare(run_dir, config.to_yaml(), spec_path, info)
    with runs.removed_unless_started(run, created):
        return _run(run, spec, config, framework, device, log, stop_after, datasets, resume=False)


def resume_run(run_dir: str | os.PathLike, device: str = "auto", epochs: int | None = None, log: Log = print,
               stop_after: int | None = None, framework: str | None = None,
               datasets: tuple[Dataset, Dataset] | None = None, data_dir: str | None = None,
               download: bool = False) -> RunResult:
    """Continue `run_dir` from its newest checkpoint (the next epoch); `epochs` may raise the total."""
    run = runs.require_resumable(run_dir)
    info = runs.read_info(run)
    config = load_train_config(run / "config.yaml")
    spec = dataclasses.replace(load_spec(run / "spec.yaml"), name=info.get("spec") or "spec")  # the name as run
    config = config.replace(bn_stats=bn_stats_rule(config.bn_stats, spec))
    trained_with = info.get("framework")
    if framework is not None and framework != trained_with:
        switch.refuse_inexact(run, config, trained_with, framework)
    persist = False
    if epochs is not None and epochs != config.epochs:
        latest = runs.latest_checkpoint(run)
        if latest is not None and epochs < latest[0]:
            raise CrossattnError(f"--epochs {epochs}: {run} has already trained {latest[0]} epochs; "
                                 f"--epochs on resume sets the new total and can only raise it")
        if config.schedule == "cosine":  # the only schedule spanning the total (constant, step and warmup do not)
            log(f"note: changing epochs {config.epochs} -> {epochs} changes the {config.schedule} schedule's "
                f"learning rates from here on")
        try:
            config = config.replace(epochs=epochs)
        except OptionError as exc:
            raise CrossattnError(f"--epochs {epochs} does not fit {run / 'config.yaml'}: {exc}") from None
        persist = True
    if data_dir is not None or download:  # where the data lives does not change the run
        config = config.replace(data_dir=data_dir if data_dir is not None else config.data_dir,
                                download=download or config.download)
    latest = runs.latest_checkpoint(run)
    if latest is not None and latest[0] >= config.epochs:
        log(f"{run} has finished its {config.epochs} epochs; pass --epochs N (more than {config.epochs}) "
            f"to train further")
    return _run(run, spec, config, framework or trained_with, device, log, stop_after, datasets, resume=True,
                persist_config=persist)


def _run(run: Path, spec: Spec, config: TrainConfig, framework: str, device: str, log: Log,
         stop_after: int | None, datasets: tuple[Dataset, Dataset] | None, resume: bool, persist_config: bool = False) -> RunResult:
    train_set, test_set = datasets or load_datasets(config)
    per_epoch = steps_per_epoch(config, len(train_set))
    module = twin(framework)
    with module.session():
        trainer = module.Trainer(spec, config, device, train_set, test_set)
        info = runs.read_info(run)
        switching = resume and info.get("framework") != framework
        if switching:
            switch.refuse_dropout(run, trainer, info.get("framework"), framework)
        first_epoch, rows = 0, []
        if resume:  # loaded before run.json changes: a switch that cannot load records nothing
            first_epoch = _load_newest_readable(trainer, run, log, framework, config)
        last = config.epochs if stop_after is None else min(config.epochs, first_epoch + stop_after)
        if switching and first_epoch < last:  # after the epoch actually loaded; a finished run switches nothing
            info.setdefault("switches", []).append({"after_epoch": first_epoch, "from": info.get("framework"),
                                                    "to": framework})
            info["framework"] = framework
        params, macs = trainer.parameters_and_macs()
        info.update({"device": trainer.device_name, "parameters": params, "macs_per_image": macs,
                     "steps_per_epoch": per_epoch, "train_images": len(train_set), "test_images": len(test_set)})
        if config.channels_last:
            info["channels_last"] = module.CHANNELS_LAST_NOTE
        if resume:  # read before anything of the run is rewritten: a damaged record changes nothing
            rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["epoch"] <= first_epoch]
        runs.write_info(run, info)
        if resume:
            if persist_config:
                atomic_write_text(run / "config.yaml", config.to_yaml())
            log(f"resuming {run} after epoch {first_epoch} of {config.epochs}")
        log(f"{framework} on {trainer.device_name}: {spec.name}, {params:,} parameters, {macs / 1e6:.1f} M "
            f"multiply-adds per image, {len(train_set)} train / {len(test_set)} test images, {per_epoch} steps/epoch")
        progress = Progress(log, config, per_epoch, first_epoch)
        for epoch in range(first_epoch, last):
            progress.start_epoch(epoch)
            with guard.stops_run(run, epoch + 1, per_epoch, config):
                result = trainer.train_epoch(epoch_plan(config, train_set, epoch), progress)
            seconds = progress.end_epoch()
            result.update(evaluate(trainer, config, test_set))
            guard.check_epoch(result, run, epoch + 1, per_epoch, config)
            row = {"epoch": epoch + 1, "step": (epoch + 1) * per_epoch,
                   "lr": lr_at(config, (epoch + 1) * per_epoch - 1, per_epoch), **result,
                   "epoch_seconds": seconds, "images_per_second": min(per_epoch * config.batch_size, len(train_set)) / seconds}
            rows.append(row)
            write_metrics(run, rows)
            runs.save_atomically(runs.checkpoint_path(run, epoch + 1, framework),
                                 lambda tmp, e=epoch: trainer.save(tmp, e + 1, (e + 1) * per_epoch))
            runs.prune_checkpoints(run, config.keep_checkpoints)
            log(f"epoch {epoch + 1}/{config.epochs} done in {seconds:.1f}s: train loss {row['train_loss']:.4f} "
                f"top1 {row['train_top1']:.4f} | val loss {row['val_loss']:.4f} top1 {row['val_top1']:.4f} "
                f"top5 {row['val_top5']:.4f}")
    return RunResult(run, rows, info, trainer)
