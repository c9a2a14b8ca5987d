"""The end of a server program's main, for the model server and the recall service alike: say where
it listens (a --port_file for whoever started it on port 0), then serve until SIGINT or SIGTERM."""
from __future__ import annotations

import os
import signal
import threading


def serve_until_signalled(server, port_file: str = "") -> None:
    """server: started, with .port, .rest_port (None when off) and .stop()."""
    if port_file:
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{server.port} {server.rest_port or 0}\n")
        os.replace(port_file + ".tmp", port_file)  # whole or absent: a reader never sees half a line
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
