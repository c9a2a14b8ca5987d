"""A Milvus standalone server (the `milvus` package's embedded build, 2.3) on loopback, in the foreground.

Runs with .milvus-venv/bin/python (its own virtualenv, outside the TFX lock: requirements-milvus.lock),
started by `make milvus-server` for users and by tests/milvus_server.py for the tests:

    .milvus-venv/bin/python scripts/milvus_server.py --port 19530 --dir runs/milvus-server [--port-file F]

Data and logs stay under --dir. The port file gets the port once the server answers its health
check. SIGTERM or Ctrl-C stops it.
"""
import argparse
import os
import signal
import sys
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=19530, help="the gRPC port clients connect to")
    p.add_argument("--dir", default="runs/milvus-server", help="data and logs")
    p.add_argument("--port-file", default="", help="write the port here once the server is up")
    args = p.parse_args()

    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=True)
    server.set_base_dir(os.path.abspath(args.dir))
    server.config.set("proxy_port", args.port)
    started = time.monotonic()
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - whatever stops it, one line and the logs' place
        sys.exit(f"error: the Milvus server did not start ({type(e).__name__}: {e}); "
                 f"logs in {os.path.join(os.path.abspath(args.dir), 'logs')}")
    print(f"Milvus {server.__class__.__module__} server on 127.0.0.1:{args.port} "
          f"(started in {time.monotonic() - started:.0f} s; data in {os.path.abspath(args.dir)})", flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{args.port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        if not server.running:
            sys.exit("error: the Milvus server stopped by itself; see its logs under " + args.dir)
    server.stop()


if __name__ == "__main__":
    main()
