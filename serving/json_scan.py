"""How deep a JSON text nests and how many values it can hold, before it is decoded.

json.loads recurses once per level and builds a Python object per value: a 16 MB body of "[]," is
5.6M lists. The scan is linear, in bounded memory, and incremental (JsonScan.feed as the body
arrives), so a REST request can be refused after its first megabyte.

A quote is a string's edge unless an odd run of backslashes precedes it; [ { and , outside strings
are counted as values (each value but the first of a list follows a comma). Small bodies take
regular expressions without backtracking; larger ones numpy, a chunk at a time.
"""
from __future__ import annotations

import re

import numpy as np

_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))


_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the byte it escapes
_STRING = re.compile(rb'"[^"]*"')           # once escapes are gone, a string holds no quote
_BRACKET = re.compile(rb"[\[\]{}]")
SMALL_BODY = 8192


def json_scan(body: bytes, chunk: int = 1 << 20, small: int = SMALL_BODY) -> tuple[int, int]:
    """(the deepest nesting of [ and {, the values the text can hold) of a whole JSON text."""
    if len(body) < small:
        text = _STRING.sub(b"", _ESCAPE.sub(b"", body))
        depth = deepest = 0
        for bracket in _BRACKET.findall(text):
            depth += 1 if bracket in b"[{" else -1
            deepest = max(deepest, depth)
        return deepest, text.count(b"[") + text.count(b"{") + text.count(b",")
    scan = JsonScan(chunk)
    scan.feed(body)
    return scan.deepest, scan.values


class JsonScan:
    """The same scan, fed the text piece by piece (pieces cut anywhere, inside escapes too)."""

    def __init__(self, chunk: int = 1 << 20):
        self.chunk = chunk
        self.depth = self.deepest = self.values = 0
        self._in_string, self._run = 0, 0  # inside a string; backslashes ending the last piece

    def feed(self, data) -> None:
        for start in range(0, len(data), self.chunk):
            self._feed(np.frombuffer(data, np.uint8, count=min(self.chunk, len(data) - start), offset=start))

    def _feed(self, b: np.ndarray) -> None:
        in_string, run = self._in_string, self._run
        quote = b == _QUOTE
        slash = b == _BACKSLASH
        if run or slash.any():
            idx = np.arange(b.size, dtype=np.int64)
            last_plain = np.maximum.accumulate(np.where(slash, -1, idx))  # last non-backslash at or before i
            before = np.concatenate(([-1], last_plain[:-1]))
            backslashes = idx - 1 - before + np.where(before < 0, run, 0)  # the run just before i
            quote &= backslashes % 2 == 0
            run = b.size - 1 - int(last_plain[-1]) + (run if last_plain[-1] < 0 else 0)
        parity = (np.cumsum(quote, dtype=np.int64) + in_string) & 1  # 1: inside a string after this byte
        outside = (parity == 0) & ~quote
        opens = ((b == _OPEN[0]) | (b == _OPEN[1])) & outside
        steps = opens.astype(np.int32) - (((b == _CLOSE[0]) | (b == _CLOSE[1])) & outside)
        running = np.cumsum(steps) + self.depth
        self.deepest, self.depth = max(self.deepest, int(running.max())), int(running[-1])
        self.values += int(np.count_nonzero(opens)) + int(np.count_nonzero((b == _COMMA) & outside))
        self._in_string, self._run = int(parity[-1]), run


def json_depth(body: bytes, chunk: int = 1 << 20) -> int:
    return json_scan(body, chunk)[0]
