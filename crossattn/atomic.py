"""Write files whole or not at all: a temp file in the same folder, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path), then move tmp_path onto `path`; on any error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with open(tmp_path, "rb+") as handle:  # on disk before it gets the real name
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once at import: changing it later would race with other threads


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power loss must not bring back the old file or none)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text`; a path that cannot be written is a user error naming it."""
    try:
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        from crossattn.errors import CrossattnError

        raise CrossattnError(f"{path}: cannot write it ({why_not_written(path, exc)}); nothing was written") from None


def why_not_written(path: str | os.PathLike, exc: OSError) -> str:
    """The reason a write failed, naming a file that stands where a folder of the path should be."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return str(exc.strerror or exc)


#: the files this process read as a command's input (resolved path -> what it was), so no output replaces one
_INPUTS: dict[str, str] = {}


def note_input(path: str | os.PathLike, what: str = "input") -> None:
    """Record `path` as an input of the running command (specs, configs, model arguments, name maps, weights)."""
    try:
        _INPUTS.setdefault(str(Path(path).resolve()), what)
    except (OSError, RuntimeError):
        pass


def refuse_input_as_output(path: str | os.PathLike, option: str) -> None:
    """A user error when the output `option` names a file this command read: writing there would replace it."""
    try:
        resolved = str(Path(path).resolve())
    except (OSError, RuntimeError):
        return
    if resolved in _INPUTS:
        from crossattn.errors import CrossattnError

        raise CrossattnError(f"{option} {path}: that is the {_INPUTS[resolved]} this command read; writing there "
                             f"would replace it, so nothing was written: give {option} another path")


def write_output(path: str | os.PathLike, text: str, option: str) -> Path:
    """A command's report or proposal, written whole; never onto one of the command's own inputs."""
    refuse_input_as_output(path, option)
    return atomic_write_text(path, text)


def save_figure(figure: object, path: str | os.PathLike, option: str = "--plot", dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG, written whole; a path that cannot be written is a user error naming it."""
    refuse_input_as_output(path, option)
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    except OSError as exc:
        from crossattn.errors import CrossattnError

        raise CrossattnError(f"{option} {path}: cannot write it ({why_not_written(path, exc)}); nothing was "
                             f"written") from None
