"""A real Milvus standalone server for the tests: scripts/milvus_server.py in .milvus-venv (made by
`make milvus-setup`, which `make test` runs), on a free loopback port, data under a temp folder."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from tests.conftest import REPO, free_port

PYTHON = os.path.join(REPO, ".milvus-venv", "bin", "python")


def unavailable_reason() -> str | None:
    if not os.path.exists(os.path.join(REPO, ".milvus-venv", ".installed")):
        return "no .milvus-venv: run `make milvus-setup` (make test does)"
    return None


@contextlib.contextmanager
def milvus_server(data_dir, timeout: float = 240):
    """Yields the server's URI (http://127.0.0.1:PORT); stops it (SIGTERM) at the end."""
    port = free_port()
    port_file = os.path.join(str(data_dir), "port")
    os.makedirs(str(data_dir), exist_ok=True)
    log = open(os.path.join(str(data_dir), "runner.log"), "w")
    proc = subprocess.Popen([PYTHON, os.path.join(REPO, "scripts", "milvus_server.py"), "--port", str(port),
                             "--dir", str(data_dir), "--port-file", port_file], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited with {proc.returncode}: "
                                   + open(log.name).read()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Milvus server did not start in {timeout:.0f} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
