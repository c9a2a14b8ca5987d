"""Which files under some directories were opened: Linux inotify through ctypes (no extra package).

The kernel reports opens made by any code in the process, C++ file systems included, which an audit
hook in Python would miss.
"""
from __future__ import annotations

import ctypes
import os
import struct

IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x001, 0x020, 0o4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class OpenWatch:
    """Records every open or read inside the watched directories (not recursive: pass each one)."""

    def __init__(self, directories):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs = {}
        for d in directories:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(d), IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
            self._dirs[wd] = d

    def events(self) -> list[str]:
        """Paths opened or read since the last call ('' names the watched directory itself)."""
        seen, buf = [], b""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            buf += chunk
        while buf:
            wd, _, _, n = _EVENT.unpack_from(buf)
            name = buf[_EVENT.size:_EVENT.size + n].rstrip(b"\0").decode()
            seen.append(os.path.join(self._dirs[wd], name))
            buf = buf[_EVENT.size + n:]
        return seen

    def close(self) -> None:
        os.close(self._fd)
