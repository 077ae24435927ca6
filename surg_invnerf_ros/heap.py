"""The C heap under numpy and torch: hand freed memory back to the system (glibc; nothing elsewhere).

glibc serves blocks above its mmap threshold with their own mappings, returned on free, but raises that
threshold (up to 32 MB) each time such a block is freed; after that, the many 5–30 MB arrays of a
front end or a fit come from the heap, whose freed pages stay with the process, fragmented between
long-lived arrays. Measured on the real 1280×1024 clip: the correspondence store of 1.4 GB peaked at
6.0 GB of RSS with the moving threshold, 3.5 GB with a fixed one.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (`malloc_trim`)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def map_large_blocks(threshold_bytes: int = 128 * 1024) -> bool:
    """Serve every block of at least `threshold_bytes` from its own mapping from now on (a fixed mmap
    threshold, so glibc stops raising it); True where that was set."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
