"""Freed memory back to the system: glibc keeps freed heap pages and, after freeing a large block,
raises its mmap threshold so later large blocks come from the heap too. A server that held a 15 MB
request body or unloaded a model would keep that memory for good.

keep_large_blocks_mapped() fixes the threshold (large blocks are mapped and unmapped on free);
return_freed_memory() trims the heap (malloc_trim). Both do nothing where glibc is not the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def keep_large_blocks_mapped(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    return bool(_LIBC and _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))


def return_freed_memory() -> None:
    if _LIBC:
        _LIBC.malloc_trim(0)
