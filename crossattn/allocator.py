"""Keep freed heap memory for reuse instead of handing it back to the OS after every tensor.

glibc serves each allocation above its mmap threshold (128 KiB, rising on
its own to at most 32 MiB) with a fresh mmap and unmaps it on free, and trims
the heap top whenever 128 KiB lie free there. The frameworks allocate and free
tensors of megabytes at every op, so each forward and backward faulted its
memory in again page by page: `crossattn check --all` spent more time in the
kernel (75 million minor page faults, 234 s of system time) than computing
(207 s user). With the threshold fixed at its maximum and trimming off, freed
pages are reused: SE-ResNet-50's check went from 20 s to 4 s of system time at
the same peak RSS. Commands that must return memory (convert's bound) call
`crossattn.model_pair.release_freed_memory`, which trims explicitly.

A user's own MALLOC_* environment settings win, as does CROSSATTN_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's upper limit for the mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: free memory at the heap top kept before trimming (effectively: never trim on free)
TRIM_THRESHOLD = 2**31 - 1

_done = False


def keep_freed_heap() -> bool:
    """Set the heap to reuse freed memory (once per process); False where glibc or the user says otherwise."""
    global _done
    if _done:
        return True
    _done = True
    if os.environ.get("CROSSATTN_MALLOC") == "default" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False
