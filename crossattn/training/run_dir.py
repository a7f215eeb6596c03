"""Run directory layout, atomic checkpoints and resume.

    RUN_DIR/
      config.yaml            the training config as run (overrides applied)
      spec.yaml              the model spec as given
      run.json               framework, device, parameter and multiply-add counts
      metrics.jsonl / .csv   one row per finished epoch
      checkpoints/epoch_0003.pt     model + optimizer state after epoch 3 (1-based); .pdparams
                             in paddle runs, so `crossattn convert` reads it directly

A checkpoint is written by the framework's own save to a temporary file in the
same folder and renamed into place, so any file matching the pattern is whole.
Everything else a run needs (batch order, augmentation, learning rate) is a
function of (seed, epoch, step), so resuming needs only the newest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossattn.atomic import atomic_write, atomic_write_text
from crossattn.errors import CrossattnError

CHECKPOINT_DIR = "checkpoints"
#: what a run directory holds before its first epoch; anything else there belongs to someone else
OWN_FILES = frozenset({"config.yaml", "spec.yaml", "run.json", CHECKPOINT_DIR})
#: each framework's own checkpoint extension, the one `crossattn convert` recognises
CHECKPOINT_SUFFIX = {"torch": ".pt", "paddle": ".pdparams"}
_PATTERN = re.compile(r"^epoch_(\d{4,})\.(pt|pdparams)$")


def checkpoint_path(run_dir: str | os.PathLike, epoch: int, framework: str) -> Path:
    """Checkpoint after `epoch` epochs (1-based count of finished epochs)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}{CHECKPOINT_SUFFIX[framework]}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return sorted(found)


def framework_of_checkpoint(path: Path) -> str:
    """Which framework wrote a run's checkpoint (its extension says; a run may switch frameworks)."""
    return next(fw for fw, suffix in CHECKPOINT_SUFFIX.items() if path.name.endswith(suffix))


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_atomically(path: Path, save: Callable[[str], None]) -> Path:
    """save(tmp) with the framework's own writer, then rename onto `path`."""
    return atomic_write(path, lambda tmp: save(str(tmp)))


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    for _, path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def prepare(run_dir: str | os.PathLike, config_yaml: str, spec_path: str | os.PathLike,
            info: dict[str, Any]) -> Path:
    """Create the folder and record what the run is; refuses a folder that already holds a run."""
    run_dir = Path(run_dir)
    if list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists():
        raise CrossattnError(f"run directory {run_dir} already holds a run; pass --resume {run_dir} to continue "
                             f"it, or choose another --run-dir")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in OWN_FILES) if run_dir.is_dir() else []
    if foreign or (run_dir / "config.yaml").exists() and "framework" not in read_info(run_dir):
        shown = ", ".join(foreign[:5]) or "config.yaml"
        raise CrossattnError(f"run directory {run_dir} holds files crossattn did not write ({shown}); "
                             f"choose an empty or new --run-dir so nothing of yours is overwritten")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    atomic_write_text(run_dir / "spec.yaml", Path(spec_path).read_text(encoding="utf-8"))
    write_info(run_dir, info)
    return run_dir


def write_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / "run.json", json.dumps(info, indent=2) + "\n")


def read_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def require_resumable(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    for name in ("config.yaml", "spec.yaml", "run.json"):
        if not (run_dir / name).is_file():
            raise CrossattnError(f"cannot resume {run_dir}: it has no {name}; it is not a crossattn run directory")
    return run_dir


def remove(run_dir: str | os.PathLike) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
