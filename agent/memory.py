"""Give freed heap back to the system, so RSS falls after a flood of emitters has expired.

glibc keeps freed memory in its arenas for reuse: after 20,000 tracks
expire, the process still holds what they used (the probe's 84 -> 352 MB
stayed at 352). ``malloc_trim(0)`` returns the free pages; elsewhere (musl,
macOS) there is nothing to call and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc only); cheap enough after a large expiry."""
    if _TRIM is not None:
        _TRIM(0)
