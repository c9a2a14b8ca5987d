"""Progress lines of long steps, for every layer: `log` and RateLog (rows read, steps trained, items
indexed: count, rate and time left, at most every few seconds). Lines go to stderr through the
"progress" logger.
"""
from __future__ import annotations

import logging
import sys
import time

_log = logging.getLogger("progress")
if not _log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False  # absl's root handler would print every line twice


def log(message: str) -> None:
    _log.info(message)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RateLog:
    """`what: 12,000/50,000 rows (24%), 3,100 rows/s, ~12s left`, every `every_seconds` at most."""

    def __init__(self, what: str, unit: str, total: float | None = None, every_seconds: float = 5.0):
        self.what, self.unit, self.total, self.every = what, unit, total, every_seconds
        self._first: tuple[float, float] | None = None  # (time, done) of the first update: the rate
        self._last = 0.0                                 # leaves out the set-up before it

    def update(self, done: float, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first, self._last = (now, done), now
            return
        if not force and now - self._last < self.every:
            return
        self._last = now
        log(self.line(done, self._rate(done, now), extra))

    def finish(self, done: float, extra: str = "") -> None:
        """The last line, always (a short job may end before the first interval): no time left."""
        log(self.line(done, self._rate(done, time.monotonic()), extra, left=False))

    def _rate(self, done: float, now: float) -> float:
        if self._first is None or now <= self._first[0]:
            return 0.0
        return (done - self._first[1]) / (now - self._first[0])

    def line(self, done: float, rate: float, extra: str = "", left: bool = True) -> str:
        text = f"{self.what}: {done:,.0f}"
        if self.total:
            text += f"/{self.total:,.0f} ({done / self.total:.0%})"
        text += f" {self.unit}, {rate:,.0f} {self.unit}/s"
        if left and self.total and rate > 0 and done < self.total:
            text += f", ~{duration((self.total - done) / rate)} left"
        return text + (f", {extra}" if extra else "")
