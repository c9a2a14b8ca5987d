"""A model server that speaks TF Serving's protocol over the pushed SavedModels.

    python -m serving.server --port 8500 [--rest_api_port 8501] \
        (--model_name NAME --model_base_path DIR | --model_config_file FILE) [flags as TF Serving]

The flags, the layout (<base_path>/<version>/saved_model.pb), the version policies, the gRPC
services (PredictionService, ModelService) and the REST API are TF Serving's, so clients written
for this server work against a real tensorflow_model_server (which this machine cannot install).
It binds 127.0.0.1 unless --host says otherwise.

Who may reach the ports may use the models and, unless --allow_reload=false, replace them: as with
TF Serving, the server has no authentication or TLS of its own. Keep it on loopback, or put an
authenticating TLS proxy in front of it. A reload can only name base paths under
--model_base_path_roots, so a client cannot make it load (and run) a SavedModel from elsewhere.
"""
from __future__ import annotations

import os
import sys

from common.quiet import quiet, quiet_loggers, verbose_requested


def _fail_fast(argv: list[str]) -> None:
    """Before TensorFlow loads (about 10 s): a --model_base_path that does not exist, or a port another
    process listens on, is one line within a second. The full checks run again after."""
    import argparse

    from serving.grpc_bind import port_in_use

    p = argparse.ArgumentParser(add_help=False)
    for flag, default in (("--model_base_path", ""), ("--model_config_file", ""), ("--port", "8500"),
                          ("--rest_api_port", "0"), ("--host", "127.0.0.1")):
        p.add_argument(flag, default=default)
    a, _ = p.parse_known_args(argv)
    if a.model_base_path and not a.model_config_file and not os.path.isdir(a.model_base_path):
        raise SystemExit(f"error: --model_base_path {a.model_base_path}: no such directory (it holds the model's "
                         "versions, <base_path>/<version>/saved_model.pb)")
    for flag, port in (("--port", a.port), ("--rest_api_port", a.rest_api_port)):
        if port.isdigit() and 0 < int(port) < 65536 and port_in_use(a.host, int(port)):
            raise SystemExit(f"error: cannot listen on {a.host}:{port} ({flag}): another process listens there; "
                             f"stop it or pick another {flag}")


STARTING = None  # the start-up's progress line and heartbeat, when run as a program
if __name__ == "__main__":
    quiet(verbose_requested())  # before TensorFlow loads; --verbose brings its warnings back
    _fail_fast(sys.argv[1:])
    from common.progress import Activity

    STARTING = Activity("model server starting: importing TensorFlow, then loading the models").start()

import argparse  # noqa: E402
import logging  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

from serving import predict  # noqa: E402
from serving.grpc_api import add_services  # noqa: E402
from serving.grpc_bind import bind_grpc, grpc_host  # noqa: E402
from serving.lifecycle import serve_until_signalled  # noqa: E402
from serving.memory import keep_large_blocks_mapped  # noqa: E402
from serving.model_config import (  # noqa: E402
    ConfigError,
    ModelConfig,
    default_roots,
    read_config_file,
    single_model,
)
from serving.request_cost import InFlight, RequestLimits  # noqa: E402
from serving.rest_api import RestLimits, RestServer  # noqa: E402
from serving.servables import DEFAULT_MAX_MODELS, ServableManager  # noqa: E402

log = logging.getLogger("serving")

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ModelServer:
    """gRPC (and optionally REST) on loopback; port 0 picks a free port (see .port / .rest_port).

    roots: the directories model base paths may lie under, at start and in every reload (default:
    the initial base paths themselves); allow_reload: HandleReloadConfigRequest at all."""

    def __init__(self, configs: list[ModelConfig], port: int = 0, rest_api_port: int | None = None,
                 host: str = "127.0.0.1", poll_seconds: float = 1.0, config_file: str | None = None,
                 config_poll_seconds: float = 0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 threads: int = 16, limits: RequestLimits | None = RequestLimits(),
                 rest_limits: RestLimits | None = None, roots: list[str] | None = None, allow_reload: bool = True,
                 allow_empty_config: bool = False, max_models: int = DEFAULT_MAX_MODELS):
        keep_large_blocks_mapped()
        self.manager = ServableManager(configs, poll_seconds, config_file, config_poll_seconds,
                                       warmup=predict.run_warmup, roots=roots,
                                       allow_empty_config=allow_empty_config, max_models=max_models)
        self.host = host
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        # one budget for what the requests being answered hold, over gRPC and REST together
        self.inflight = InFlight(limits.max_inflight_bytes) if limits and limits.max_inflight_bytes else None
        add_services(self._grpc, self.manager, limits, allow_reload, self.inflight)
        self.port = bind_grpc(self._grpc, host, port)
        self._rest = None
        self.rest_port = None
        if rest_api_port is not None:
            rest = rest_limits or RestLimits()
            rest = RestLimits(**{**rest.__dict__, "max_request_bytes": max_request_bytes, "request": limits})
            self._rest = RestServer(self.manager, host, rest_api_port, rest, self.inflight)
            self.rest_port = self._rest.port

    def start(self) -> ModelServer:
        self.manager.start()  # loads what is on disk before the first request is accepted
        self._grpc.start()
        if self._rest:
            self._rest.start()
        log.info("serving gRPC on %s:%d%s", self.host, self.port,
                 f", REST on {self.host}:{self.rest_port}" if self._rest else "")
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._grpc.stop(grace).wait()
        if self._rest:
            self._rest.stop()
        self.manager.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def target(self) -> str:
        return f"{grpc_host(self.host)}:{self.port}"


def spawn(flags: list[str], log_path: str, timeout: float, cwd: str | None = None) -> tuple:
    """Starts `python -m serving.server --port 0 FLAGS` in its own process on loopback and waits until
    it serves (it loads the models first): (process, gRPC port); process.rest_port is the REST port
    (0 when off). Its output goes to log_path. `cwd`: run the server code of another checkout."""
    import subprocess
    import tempfile
    import time

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cwd:
        env["PYTHONPATH"] = cwd
    port_file = os.path.join(tempfile.mkdtemp(prefix="model-server-"), "port")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--port", "0", "--host", "127.0.0.1",
                                 "--port_file", port_file, *flags], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd)
    deadline = time.monotonic() + timeout
    while not os.path.exists(port_file):
        if proc.poll() is not None:
            raise RuntimeError(f"the model server exited with code {proc.returncode} while loading (log: {log_path})")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"the model server did not start within {timeout:.0f} s (log: {log_path})")
        time.sleep(0.2)
    with open(port_file) as f:
        ports = [int(p) for p in f.read().split()]
    proc.rest_port = ports[1] if len(ports) > 1 else 0
    return proc, ports[0]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 = REST off (TF Serving's default)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="")
    p.add_argument("--model_config_file", default="")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1)
    p.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest request (gRPC: RESOURCE_EXHAUSTED; REST: 413 from the headers)")
    p.add_argument("--max_request_elements", type=int, default=RequestLimits.max_entries,
                   help="entries per request over all inputs: every value and every list, empty ones "
                        "included, and each serialized tf.Example's features and values; counted from the "
                        "declared shapes before any tensor is built (INVALID_ARGUMENT / 400 above it; 0 = no limit)")
    p.add_argument("--max_request_model_bytes", type=int, default=RequestLimits.max_model_bytes,
                   help="rows x the floats a row costs once padded (declared by the model in "
                        "assets.extra/serving_contract.json) x 4 bytes (INVALID_ARGUMENT / 400 above it; 0 = no limit)")
    p.add_argument("--max_response_bytes", type=int, default=RequestLimits.max_response_bytes,
                   help="largest answer (gRPC: RESOURCE_EXHAUSTED; REST: 413), checked before it is sent")
    p.add_argument("--max_inflight_request_bytes", type=int, default=RequestLimits.max_inflight_bytes,
                   help="what the requests being answered may hold at once, gRPC and REST together (a request's "
                        "bytes x the copies answering it makes); one that would pass it waits up to 5 s, then "
                        "RESOURCE_EXHAUSTED / 429 (0 = no limit)")
    p.add_argument("--model_base_path_roots", default="",
                   help="comma-separated directories every model base path must lie under, in the config "
                        "file and in reload requests (default: the config file's directory, or "
                        "--model_base_path itself); a path elsewhere is refused with nothing read")
    p.add_argument("--allow_reload", type=_bool, default=True, metavar="true|false",
                   help="accept HandleReloadConfigRequest (default true, as TF Serving); false: PERMISSION_DENIED")
    p.add_argument("--allow_empty_config", type=_bool, default=False, metavar="true|false",
                   help="accept a config (reload or polled file) that names no model, unloading every model")
    p.add_argument("--max_models", type=int, default=DEFAULT_MAX_MODELS,
                   help="most models one config may name (each loaded model holds its graph in memory; 0 = no limit)")
    p.add_argument("--max_json_depth", type=int, default=RestLimits.max_json_depth,
                   help="REST: deepest JSON nesting accepted (400 above it)")
    p.add_argument("--rest_api_num_threads", type=int, default=RestLimits.threads,
                   help="REST: threads that compute answers (TF Serving's flag)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=int(RestLimits.timeout_seconds * 1000),
                   help="REST: time for a request's headers, for its body, and for an idle kept-alive "
                        "connection (TF Serving's flag)")
    p.add_argument("--rest_api_max_connections", type=int, default=RestLimits.max_connections,
                   help="REST: connections open at once; more are closed when accepted")
    p.add_argument("--threads", type=int, default=16, help="gRPC worker threads")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads for one op (TF Serving's flag; 0 = TensorFlow's default)")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="ops run at once (TF Serving's flag; 0 = TensorFlow's default)")
    p.add_argument("--port_file", default="", help="write '<grpc port> <rest port>' here once serving")
    p.add_argument("--verbose", action="store_true", help="also TensorFlow's C++ log and third-party warnings")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    if args.tensorflow_intra_op_parallelism:  # before any op runs
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    if args.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_loggers(args.verbose)
    try:
        if args.model_config_file:
            configs = read_config_file(args.model_config_file)
        elif args.model_base_path:
            if not os.path.isdir(args.model_base_path):
                raise ConfigError(f"--model_base_path {args.model_base_path}: no such directory (it holds the "
                                  "model's versions, <base_path>/<version>/saved_model.pb)")
            configs = single_model(args.model_name, args.model_base_path)
        else:
            raise ConfigError("give --model_base_path (with --model_name) or --model_config_file")
        roots = ([r for r in args.model_base_path_roots.split(",") if r] or
                 default_roots(args.model_config_file, args.model_base_path))
        server = ModelServer(
            configs, port=args.port, rest_api_port=args.rest_api_port or None, host=args.host,
            poll_seconds=args.file_system_poll_wait_seconds, config_file=args.model_config_file or None,
            config_poll_seconds=args.model_config_file_poll_wait_seconds,
            max_request_bytes=args.max_request_bytes, threads=args.threads,
            limits=RequestLimits(args.max_request_elements, args.max_request_model_bytes, args.max_response_bytes,
                                 args.max_inflight_request_bytes),
            rest_limits=RestLimits(max_json_depth=args.max_json_depth, threads=args.rest_api_num_threads,
                                   timeout_seconds=args.rest_api_timeout_in_ms / 1000,
                                   max_connections=args.rest_api_max_connections),
            roots=roots, allow_reload=args.allow_reload, allow_empty_config=args.allow_empty_config,
            max_models=args.max_models).start()
    except (ConfigError, OSError) as e:  # OSError: a port that cannot be bound
        raise SystemExit(f"error: {e}") from None
    finally:
        if STARTING is not None:
            STARTING.stop()
    serve_until_signalled(server, args.port_file)


if __name__ == "__main__":
    main(sys.argv[1:])
