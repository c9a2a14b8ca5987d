"""Progress lines of long steps, for every layer: `log` and RateLog (rows read, steps trained, items
indexed: count, rate and time left, at most every few seconds). Lines go to stderr through the
"progress" logger.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

_log = logging.getLogger("progress")
if not _log.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False  # absl's root handler would print every line twice


_last_line = time.monotonic()  # when the last progress line was written: Activity's heartbeat reads it


def log(message: str) -> None:
    global _last_line
    _log.info(message)
    _last_line = time.monotonic()


def seconds_since_last_line() -> float:
    return time.monotonic() - _last_line


def process_seconds() -> float | None:
    """Seconds since this process started (its interpreter's start-up and imports included); None
    where the system has no /proc (macOS): the report then gives the components' seconds alone."""
    try:
        with open("/proc/self/stat") as f:  # field 22: start time in clock ticks after boot
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


class Activity:
    """`with Activity("loading the model"):` logs the step at once, then a line whenever `every_seconds`
    pass with no progress line at all, so a slow step (importing TensorFlow, a silent library call)
    never leaves the terminal quiet for longer than that."""

    def __init__(self, what: str, every_seconds: float = 10.0):
        self.what, self.every = what, every_seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="activity")

    def start(self) -> Activity:
        self._started = time.monotonic()
        log(f"{self.what} ...")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Activity:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._done.wait(min(1.0, self.every / 4)):
            if seconds_since_last_line() >= self.every:
                log(f"… {self.what} ({duration(time.monotonic() - self._started)})")


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
