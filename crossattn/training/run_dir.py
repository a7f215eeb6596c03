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

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crossattn.atomic import atomic_write, atomic_write_text
from crossattn.errors import CrossattnError
from weight_transfer.integrity import seal_pickle, verify_file

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
    """save(tmp) with the framework's own writer, seal it with a checksum, then rename onto `path`.

    A write that fails (a full disk, a quota, a file-size limit) leaves no temp file and the
    older checkpoints as they were, and is a user error saying so instead of a framework traceback.
    """
    def write(tmp: Path) -> None:
        save(str(tmp))
        if path.suffix == ".pdparams":  # torch's zip archives carry CRC-32s of their own
            seal_pickle(tmp)

    try:
        return atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not _write_failure(exc):
            raise
        raise CheckpointWriteFailed(path, exc) from None


def _write_failure(exc: RuntimeError) -> bool:
    """torch.save reports a failed write as a RuntimeError from its zip writer."""
    text = str(exc)
    return any(part in text for part in ("inline_container", "file write failed", "unexpected pos", "No space",
                                          "write"))


class CheckpointWriteFailed(CrossattnError):
    """A checkpoint that could not be written; nothing was replaced."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:200]
        try:
            left = shutil.disk_usage(path.parent).free
            free = f"; {left / (1 << 20):,.1f} MiB free there"
            if not isinstance(exc, OSError) and left < 1 << 20:
                reason = f"the disk is full; {framework_name(path)} said: {reason}"
        except OSError:
            free = ""
        older = [p.name for _, p in list_checkpoints(path.parent.parent)]
        kept = f"the older checkpoints ({', '.join(older)}) are kept" if older else "no older checkpoint exists"
        super().__init__(f"cannot write checkpoint {path} ({reason}{free}): nothing was written for it and {kept}. "
                         f"Free disk space (or raise the quota), then continue with --resume {path.parent.parent}")


def framework_name(path: Path) -> str:
    return "paddle" if path.suffix == ".pdparams" else "torch"


def verify_checkpoint(path: str | os.PathLike) -> str:
    """Check a training checkpoint's own checksum before it is loaded; DamagedCheckpoint if it does not match."""
    path = Path(path)
    return verify_file(path, "paddle" if path.suffix == ".pdparams" else "torch")


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
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir():  # a folder of that common name holding files of someone else's
        foreign += sorted(f"{CHECKPOINT_DIR}/{p.name}" for p in checkpoints.iterdir())
    elif checkpoints.exists():
        foreign.append(CHECKPOINT_DIR)
    ours = [name for name in ("config.yaml", "spec.yaml", "run.json") if (run_dir / name).exists()]
    if ours and "framework" not in _info_or_empty(run_dir):  # not left by an interrupted crossattn run
        foreign += ours
    if foreign:
        shown = ", ".join(foreign[:5])
        raise CrossattnError(f"run directory {run_dir} holds files crossattn did not write ({shown}); "
                             f"choose an empty or new --run-dir so nothing of yours is overwritten")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        atomic_write_text(run_dir / "spec.yaml", Path(spec_path).read_text(encoding="utf-8"))
        write_info(run_dir, info)
    except BaseException:
        if created:  # nothing half-made is left behind
            remove(run_dir)
        raise
    return run_dir


#: what a fresh run writes before its first epoch ends (`prepare`, the run loop); a failure then removes only these
WRITTEN_FIRST = ("config.yaml", "spec.yaml", "run.json", "metrics.jsonl", "metrics.csv")


@contextlib.contextmanager
def removed_unless_started(run_dir: str | os.PathLike, created: bool = True) -> Iterator[None]:
    """Around a fresh run: a failure before its first epoch finished removes what the run wrote, and the folder
    itself only where the run made it (`created`); a folder that was there stays, with anything else in it.

    Such a run holds no trained state, only the copies `prepare` wrote; leaving them would
    make the next `train --run-dir` refuse the folder for holding a run.
    """
    try:
        yield
    except Exception:  # an interrupt keeps the folder: --resume continues it
        run_dir = Path(run_dir)
        if not list_checkpoints(run_dir) and not (run_dir / "metrics.jsonl").exists():
            if created:
                remove(run_dir)
            else:
                for name in WRITTEN_FIRST:
                    (run_dir / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (run_dir / CHECKPOINT_DIR).rmdir()  # only when empty
        raise


def _info_or_empty(run_dir: Path) -> dict[str, Any]:
    try:
        info = read_info(run_dir)
    except CrossattnError:
        return {}
    return info


def write_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / "run.json", json.dumps(info, indent=2) + "\n")


def read_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """run.json's record ({} where there is none); a damaged one is named, not a traceback."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CrossattnError(f"{path}: cannot read the run's record ({type(exc).__name__}: {exc}); expected the "
                             f"JSON object crossattn writes (framework, spec, device, counts)") from None
    if not isinstance(info, dict):
        raise CrossattnError(f"{path}: holds a {type(info).__name__}, not the JSON object crossattn writes "
                             f"(framework, spec, device, counts)")
    return info


def require_resumable(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    for name in ("config.yaml", "spec.yaml", "run.json"):
        if not (run_dir / name).is_file():
            raise CrossattnError(f"cannot resume {run_dir}: it has no {name}; it is not a crossattn run directory")
    return run_dir


def remove(run_dir: str | os.PathLike) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
