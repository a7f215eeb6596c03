"""Ablation runner: a baseline and its variants trained with one config, summarised as a table and a plot.

An ablation file names a training config, a baseline model spec and variant
specs (shipped names or paths relative to the file). Each (spec, framework)
pair trains in its own run directory under the output folder; a run already
finished there is read back, an unfinished one is resumed.

FLOPs are reported as multiply-adds per image of every conv and linear layer
(forward hooks: output elements x weights feeding each output). Matrix
products inside attention blocks, norms, activations and pooling are not
counted, so a non-local block's affinity matmuls are missing from its figure.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crossattn.atomic import atomic_write_text
from crossattn.errors import CrossattnError, OptionError, SpecError, shown
from crossattn.spec import line_of, read_yaml, resolve_named, resolve_spec
from crossattn.training import run_dir as runs
from crossattn.training.config import load_train_config, resolve_train_config
from crossattn.training.metrics import read_jsonl, write_table_csv

ABLATION_DIR = Path(__file__).resolve().parent.parent / "specs" / "ablations"
KEYS = ("name", "description", "config", "baseline", "variants")
TABLE_FIELDS = ("spec", "role", "framework", "parameters", "mmacs", "epochs", "best_top1", "final_top1",
                "best_top5", "final_top5", "seconds_per_epoch")
PLOT_HINT = "plot skipped: matplotlib is not installed; pip install 'crossattn[plot]' to get ablation.png"
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    config: Path
    baseline: Path
    variants: tuple[Path, ...]
    path: str

    @property
    def specs(self) -> list[tuple[str, Path]]:
        return [("baseline", self.baseline)] + [("variant", v) for v in self.variants]


def resolve_ablation(arg: str) -> Path:
    return resolve_named(arg, ABLATION_DIR, "ablation")


def _spec_path(value: Any, key: str, raw: Any, file: str) -> Path:
    if not isinstance(value, str):
        raise SpecError(file, key, line_of(raw, [key.split("[")[0]]), f"expected a spec name or path, got {shown(value)}")
    beside = Path(file).parent / value
    if beside.suffix in (".yaml", ".yml") and beside.is_file():
        return beside
    try:
        return resolve_spec(value)
    except SpecError as exc:
        raise SpecError(file, key, line_of(raw, [key.split("[")[0]]), exc.message) from None


def load_ablation(path: str | os.PathLike) -> Ablation:
    """Read an ablation file; errors name the file, key and line."""
    file = str(path)
    raw = read_yaml(path, "pass an ablation file or a shipped ablation name")
    if not isinstance(raw, Mapping):
        raise SpecError(file, None, None, "expected a mapping with config, baseline and variants")
    for key in raw:
        if key not in KEYS:
            raise SpecError(file, str(key), line_of(raw, [str(key)]), f"unknown key; known keys: {', '.join(KEYS)}")
    for key in ("config", "baseline", "variants"):
        if key not in raw:
            raise SpecError(file, key, getattr(raw, "line", None), "missing")
    if not isinstance(raw["variants"], list) or not raw["variants"]:
        raise SpecError(file, "variants", line_of(raw, ["variants"]), "expected a non-empty list of spec names")
    try:
        config = resolve_train_config(str(raw["config"]))
        if not config.is_file():
            config = Path(file).parent / str(raw["config"])
    except SpecError as exc:
        raise SpecError(file, "config", line_of(raw, ["config"]), exc.message) from None
    baseline = _spec_path(raw["baseline"], "baseline", raw, file)
    variants = tuple(_spec_path(v, f"variants[{i}]", raw, file) for i, v in enumerate(raw["variants"]))
    seen = {baseline.stem: "baseline"}
    for i, variant in enumerate(variants):
        if variant.stem in seen:
            raise SpecError(file, f"variants[{i}]", line_of(raw, ["variants"]),
                            f"`{variant}` has the same file name as {seen[variant.stem]}; runs are stored by spec "
                            f"file name, so give every spec a distinct one")
        seen[variant.stem] = f"variants[{i}]"
    return Ablation(name=str(raw.get("name") or Path(file).stem), description=str(raw.get("description", "")),
                    config=config, baseline=baseline, variants=variants, path=file)


@dataclasses.dataclass
class Job:
    role: str
    spec: Path
    framework: str
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.spec.stem} ({self.framework})"


#: settings a run may differ in and still belong to the same ablation
_RECIPE_FREE = ("epochs", "data_dir", "download", "log_every", "keep_checkpoints")


def _check_same_recipe(job: Job, config: Any) -> None:
    """A run found in the output folder is reused only if it was trained with this spec and recipe."""
    from crossattn.training.config import load_train_config

    if not (job.run_dir / "config.yaml").is_file():
        return
    stored = load_train_config(job.run_dir / "config.yaml")
    if getattr(config, "bn_stats", None) is None:  # a run records the rule it resolved, as `train` resolves it
        from crossattn.spec import load_spec
        from crossattn.bn_stats import bn_stats_rule

        config = config.replace(bn_stats=bn_stats_rule(config.bn_stats, load_spec(job.spec)))
    differ = [f.name for f in dataclasses.fields(config)
              if f.name not in _RECIPE_FREE and getattr(stored, f.name) != getattr(config, f.name)]
    spec_path = job.run_dir / "spec.yaml"
    if spec_path.is_file() and spec_path.read_text(encoding="utf-8") != job.spec.read_text(encoding="utf-8"):
        differ.append(f"the spec ({job.spec})")
    if differ:
        raise CrossattnError(f"{job.run_dir} was trained with a different recipe ({', '.join(differ)}); "
                             f"remove it or choose another --out, so one table does not mix recipes")


def _finished(job: Job, epochs: int) -> bool:
    rows = read_jsonl(job.run_dir / "metrics.jsonl")
    return bool(rows) and rows[-1]["epoch"] >= epochs


def _run_in_process(job: Job, config_path: Path, device: str, epochs: int, log: Log) -> None:
    from crossattn.training import runner
    from crossattn.training.config import load_train_config

    def prefixed(line: str) -> None:
        log(f"[{job.label}] {line}")

    if runs.latest_checkpoint(job.run_dir) is not None:
        config = load_train_config(config_path)
        runner.resume_run(job.run_dir, device=device, epochs=epochs, log=prefixed, data_dir=config.data_dir,
                          download=config.download)
    else:
        runs.remove(job.run_dir)
        runner.train(job.spec, load_train_config(config_path), job.framework, device, job.run_dir, log=prefixed)


def _command(job: Job, config_path: Path, epochs: int) -> list[str]:
    if runs.latest_checkpoint(job.run_dir) is not None:
        return [sys.executable, "-m", "crossattn", "train", "--resume", str(job.run_dir), "--device", "gpu",
                "--epochs", str(epochs)]
    runs.remove(job.run_dir)
    return [sys.executable, "-m", "crossattn", "train", "--spec", str(job.spec), "--config", str(config_path),
            "--framework", job.framework, "--device", "gpu", "--run-dir", str(job.run_dir)]


def _run_on_devices(jobs: Sequence[Job], config_path: Path, epochs: int, devices: Sequence[str], log: Log) -> None:
    """One subprocess per device at a time, each seeing only its GPU through CUDA_VISIBLE_DEVICES."""
    queue = list(jobs)
    active: dict[str, tuple[Job, subprocess.Popen, Any]] = {}
    failed: list[str] = []
    while queue or active:
        for device in devices:
            if device not in active and queue:
                job = queue.pop(0)
                job.run_dir.parent.mkdir(parents=True, exist_ok=True)
                handle = open(job.run_dir.parent / f"{job.run_dir.name}.log", "a", encoding="utf-8")  # noqa: SIM115
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
                proc = subprocess.Popen(_command(job, config_path, epochs), stdout=handle, stderr=subprocess.STDOUT,
                                        env=env)
                active[device] = (job, proc, handle)
                log(f"started {job.label} on GPU {device} (log: {handle.name})")
        time.sleep(0.5)
        for device, (job, proc, handle) in list(active.items()):
            if proc.poll() is not None:
                handle.close()
                del active[device]
                log(f"{'finished' if proc.returncode == 0 else 'FAILED'} {job.label} on GPU {device}")
                if proc.returncode != 0:
                    failed.append(f"{job.label} (see {handle.name})")
    if failed:
        raise CrossattnError("ablation runs failed: " + "; ".join(failed))


def summarise(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per run from its metrics and run.json."""
    rows = []
    for job in jobs:
        metrics = read_jsonl(job.run_dir / "metrics.jsonl")
        info = runs.read_info(job.run_dir)
        if not metrics:
            continue
        rows.append({
            "spec": job.spec.stem, "role": job.role, "framework": job.framework,
            "parameters": info.get("parameters", ""), "mmacs": round(info.get("macs_per_image", 0) / 1e6, 2),
            "epochs": metrics[-1]["epoch"],
            "best_top1": max(m["val_top1"] for m in metrics), "final_top1": metrics[-1]["val_top1"],
            "best_top5": max(m["val_top5"] for m in metrics), "final_top5": metrics[-1]["val_top5"],
            "seconds_per_epoch": round(sum(m["epoch_seconds"] for m in metrics) / len(metrics), 2),
            "curve": [m["val_top1"] for m in metrics],
        })
    return rows


def markdown_table(ablation: Ablation, rows: Sequence[Mapping[str, Any]], config_path: Path) -> str:
    lines = [f"# Ablation `{ablation.name}`", ""]
    if ablation.description:
        lines += [ablation.description, ""]
    lines += [f"Training config: `{config_path}`. Accuracies are on the test split, evaluated after every epoch; "
              "MMACs are millions of conv/linear multiply-adds per image (attention matmuls not counted).", "",
              "| spec | role | framework | params | MMACs | epochs | best top-1 | final top-1 | best top-5 "
              "| final top-5 | s/epoch |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['role']} | {r['framework']} | {r['parameters']:,} | {r['mmacs']} | "
                     f"{r['epochs']} | {r['best_top1']:.4f} | {r['final_top1']:.4f} | {r['best_top5']:.4f} | "
                     f"{r['final_top5']:.4f} | {r['seconds_per_epoch']} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Validation top-1 per epoch, one line per run; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 5))
    for r in rows:
        style = "-" if r["framework"] == "torch" else "--"
        axes.plot(range(1, len(r["curve"]) + 1), r["curve"], style, label=f"{r['spec']} ({r['framework']})")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation top-1")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    from crossattn.atomic import save_figure

    try:
        save_figure(figure, path, "the ablation's plot", dpi=120)
    finally:
        plt.close(figure)
    return True


def check_requirements(ablation: Ablation, config: Any, frameworks: Sequence[str], device: str) -> None:
    """Everything every run needs, checked before the first one starts: a missing framework, an unusable
    device or amp setting, a spec that does not fit the data or memory fails now, not hours in."""
    from crossattn.bounds import require_training_fits
    from crossattn.spec import load_spec
    from crossattn.training.runner import check_fits_data, twin

    for framework in frameworks:
        module = twin(framework)  # FrameworkMissing names the package to install
        if device not in ("gpu", "cpu"):  # --devices: each subprocess checks its GPU; cpu is always there
            module.check_amp(config.amp, module.resolve_device(device))
    for _, path in ablation.specs:  # each error names the spec file
        spec = load_spec(path)
        check_fits_data(spec, config)
        require_training_fits(spec, config, str(ablation.config))


@dataclasses.dataclass
class AblationResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    table: Path
    csv: Path
    plot: Path | None


def run_ablation(path: str | os.PathLike, framework: str, out_dir: str | os.PathLike, epochs: int | None = None,
                 devices: Sequence[str] = (), device: str = "auto", log: Log = print,
                 overrides: Mapping[str, Any] | None = None) -> AblationResult:
    """Train (or resume, or read back) every run of the ablation, then write ablation.md/.csv/.png.

    `overrides` changes training-config fields for every run (dataset, data_dir, download).
    """
    ablation = load_ablation(path)
    config = load_train_config(ablation.config)
    changes = {**(overrides or {}), **({"epochs": epochs} if epochs is not None else {})}
    if changes:
        try:
            config = config.replace(**changes)
        except OptionError as exc:
            raise CrossattnError(f"{ablation.config} with {changes}: {exc}") from None
    frameworks = ("torch", "paddle") if framework == "both" else (framework,)
    check_requirements(ablation, config, frameworks, "gpu" if devices else device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    atomic_write_text(config_path, config.to_yaml())
    jobs = [Job(role, spec, fw, out / f"{spec.stem}-{fw}") for role, spec in ablation.specs for fw in frameworks]
    for job in jobs:
        _check_same_recipe(job, config)
    todo = [job for job in jobs if not _finished(job, config.epochs)]
    for job in jobs:
        if job not in todo:
            log(f"{job.label}: already trained for {config.epochs} epochs in {job.run_dir}")
    if devices and todo:
        _run_on_devices(todo, config_path, config.epochs, devices, log)
    else:
        for job in todo:
            _run_in_process(job, config_path, device, config.epochs, log)
    rows = summarise(jobs)
    table = atomic_write_text(out / "ablation.md", markdown_table(ablation, rows, config_path))
    csv_path = out / "ablation.csv"
    write_table_csv(csv_path, rows, TABLE_FIELDS)
    png = out / "ablation.png"
    plotted = plot(rows, png)
    if not plotted:
        log(PLOT_HINT)
    return AblationResult(out, rows, table, csv_path, png if plotted else None)
