"""Freed memory back to the system: glibc keeps freed heap pages and, after freeing a large block,
raises its mmap threshold so later large blocks come from the heap too. A server that held a 15 MB
request body or unloaded a model would keep that memory for good.

keep_large_blocks_mapped() fixes the threshold (large blocks are mapped and unmapped on free);
return_freed_memory() trims the heap (malloc_trim). Both do nothing where glibc is not the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

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


class Trimmer:
    """Trims the heap `delay` seconds after a large request, from a thread of its own: a gRPC
    request's memory is freed only after its handler has returned. Requests that keep coming trim
    at most once per `delay`."""

    LARGE_BYTES = 1 << 20

    def __init__(self, delay: float = 0.2):
        self.delay = delay
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def after(self, request_bytes: int) -> None:
        if request_bytes < self.LARGE_BYTES or not _LIBC:
            return
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._trim)
                self._timer.daemon = True
                self._timer.start()

    def _trim(self) -> None:
        with self._lock:
            self._timer = None
        return_freed_memory()
