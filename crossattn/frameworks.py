"""Lazy, checked imports of torch and paddle with an install hint when missing."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from crossattn.allocator import keep_freed_heap
from crossattn.errors import FrameworkMissing

_MODULES = {"torch": "torch", "paddle": "paddle"}
_HINTS = {
    "torch": "pip install 'crossattn[torch]' (CPU: pip install torch --index-url "
             "https://download.pytorch.org/whl/cpu)",
    "paddle": "pip install 'crossattn[paddle]' for the CPU build, or install paddlepaddle-gpu "
              "for your CUDA version",
}


def require(framework: str) -> ModuleType:
    """Import `framework` ("torch" or "paddle") or say how to install it."""
    if framework not in _MODULES:
        raise FrameworkMissing(f"unknown framework {framework!r}; expected one of: torch, paddle")
    keep_freed_heap()  # before the framework allocates: see crossattn.allocator
    try:
        with warnings.catch_warnings():
            # paddle warns at import that ccache is missing; it concerns building C++ extensions only
            warnings.filterwarnings("ignore", message="No ccache found")
            module = importlib.import_module(_MODULES[framework])
    except ImportError as exc:
        if _installed(_MODULES[framework]):  # present but broken: a missing library, a half-finished import
            raise FrameworkMissing(
                f"this command needs {framework}, which is installed but failed to import ({exc}); an import cut "
                f"short (Ctrl-C) leaves that behind for this process only: run the command again, and if it "
                f"fails the same way, reinstall it ({_HINTS[framework]})") from None
        raise FrameworkMissing(
            f"this command needs {framework}, which is not installed ({exc}); install it with: "
            f"{_HINTS[framework]}"
        ) from None
    if framework == "paddle":
        # paddle repeats at every train-mode BatchNorm call that it tracks global statistics (it always has)
        warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    return module


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def adapter(framework: str) -> ModuleType:
    """The framework's adapter module (torch_impl.adapter or paddle_impl.adapter)."""
    require(framework)
    return importlib.import_module(f"{framework}_impl.adapter")


def available(framework: str) -> bool:
    try:
        require(framework)
    except FrameworkMissing:
        return False
    return True


def require_installed(framework: str) -> None:
    """Say how to install `framework` if it is absent, without importing it (a command that imports it
    later, in another process or after other work, fails early on a missing install all the same)."""
    import importlib.util
    import sys

    if framework not in _MODULES:
        raise FrameworkMissing(f"unknown framework {framework!r}; expected one of: torch, paddle")
    if sys.modules.get(_MODULES[framework]) is not None:
        return
    try:
        found = importlib.util.find_spec(_MODULES[framework]) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise FrameworkMissing(f"this command needs {framework}, which is not installed; install it with: "
                               f"{_HINTS[framework]}")
