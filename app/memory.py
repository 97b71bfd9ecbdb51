"""Giving memory back to the system after a crowd of connections has left.

Ten thousand live readers take a few hundred megabytes; when they leave, Python frees their
objects, but the C allocator keeps the pages for reuse and the process's RSS stays where the
crowd left it. :func:`return_freed_memory` collects what only cycles still hold, then asks
glibc's allocator to hand its free pages back (``malloc_trim``). It works best with Python's
objects allocated by that allocator too (``PYTHONMALLOC=malloc``, which ``runstream serve`` sets):
Python's own small-object arenas are returned only when wholly empty, which after a crowd few
are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc: musl and macOS have no malloc_trim
        return None
    return trim


_TRIM = _malloc_trim()


def return_freed_memory() -> None:
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
