"""What a user watches while a run goes.

RunWatcher: a thread that polls the run's metadata store (MLMD), the record the runner itself
keeps, and logs one line when each component starts and one when it ends with its key figures.
It sees stock TFX components (StatisticsGen, Transform) as well as the project's own.

Its lines go through common/progress.py's logger, as RateLog's do.
"""
from __future__ import annotations

import threading
import time

from common.progress import duration, log, seconds_since_last_line


def figures(kind: str, artifact, component: str | None = None) -> str:
    """Key figures of one output artifact, as its component declares them (its OUTPUT_REPORT; '' when none)."""
    from pipeline.summary import reported

    return "; ".join(f for report, value in reported(kind, component, artifact, with_figures=True)
                     if (f := report.figures(value)))


class RunWatcher(threading.Thread):
    """Logs each component of the run as MLMD records it: started, done (with figures), cached, failed.

    One read-only connection; each poll reads only executions newer than the last one seen and those
    still running, so a store with a long history costs no more than a new one."""

    START_AFTER_SECONDS = 3.0  # "started" only for an execution running this long (a quicker one says "done")

    def __init__(self, metadata_path: str, poll_seconds: float = 1.0, heartbeat_seconds: float = 10.0):
        super().__init__(daemon=True, name="run-watcher")
        self.metadata_path, self.poll_seconds, self.heartbeat = metadata_path, poll_seconds, heartbeat_seconds
        self._stopped = threading.Event()
        self._store, self._node_type = None, None
        self._last_id: int | None = None  # executions up to this id were in the store before the run
        self._open: dict[int, tuple[str, str]] = {}  # unfinished execution id -> (node name, state logged)
        self._beat: dict[int, float] = {}

    def start(self) -> None:
        self.poll()  # what the store holds before the run is not logged
        super().start()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)
        self.poll()  # the last component's end

    def run(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            self.poll()

    def poll(self) -> None:
        try:
            self._poll()
        except Exception:  # the store is being created or written: try again at the next poll
            pass

    def _node_name(self, execution_id: int) -> str:
        for ctx in self._store.get_contexts_by_execution(execution_id):
            if self._node_type is not None and ctx.type_id == self._node_type:
                return ctx.name.split(".", 1)[-1]
        return str(execution_id)

    def _poll(self) -> None:
        import os

        import ml_metadata as mlmd

        from pipeline.summary import open_store

        if self._store is None:
            if not os.path.exists(self.metadata_path):
                if self._last_id is None:
                    self._last_id = 0
                return
            self._store = open_store(self.metadata_path)
        store = self._store
        if self._last_id is None:
            self._last_id = max((e.id for e in store.get_executions()), default=0)
            return
        if self._node_type is None:  # registered with the first component; fixed from then on
            self._node_type = next((t.id for t in store.get_context_types() if t.name == "node"), None)
        new = store.get_executions(list_options=mlmd.ListOptions(filter_query=f"id > {self._last_id}"))
        unfinished = store.get_executions_by_id(list(self._open)) if self._open else []
        now = time.time()
        for e in sorted({e.id: e for e in [*unfinished, *new]}.values(), key=lambda e: e.id):
            self._last_id = max(self._last_id, e.id)
            self._log_state(store, e, now)

    def _log_state(self, store, e, now: float) -> None:
        from pipeline.summary import STATE_NAMES, output_artifacts

        state = STATE_NAMES[e.last_known_state]
        name, logged = self._open.get(e.id) or (self._node_name(e.id), None)
        if logged == state:
            if (state == "RUNNING" and now - self._beat.get(e.id, now) >= self.heartbeat
                    and seconds_since_last_line() >= self.heartbeat):  # quiet for that long: say what runs
                self._beat[e.id] = now
                log(f"… {name} running for {duration(now - e.create_time_since_epoch / 1000)}")
            return
        if state in ("NEW", "RUNNING"):
            if now - e.create_time_since_epoch / 1000 < self.START_AFTER_SECONDS:
                # Not yet: a component reused from the cache is RUNNING while the cache is looked up,
                # and "started" followed by "reused" says two things at once.
                self._open[e.id] = (name, None)
                return
            self._open[e.id] = (name, state)
            self._beat[e.id] = now
            log(f"▶ {name} started")
            return
        self._open.pop(e.id, None)
        seconds = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
        types = {t.id: t.name for t in store.get_artifact_types()}
        found = [f for a in output_artifacts(store, e.id)
                 if (f := figures(types[a.type_id], a, name))]
        detail = f": {'; '.join(found)}" if found else ""
        if state == "COMPLETE":
            log(f"✓ {name} done in {duration(seconds)}{detail}")
        elif state == "CACHED":
            log(f"= {name} reused from an earlier run{detail}")
        else:
            log(f"✗ {name} {state.lower()} after {duration(seconds)}")
