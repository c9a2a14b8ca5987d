"""The recall service: what a feed backend calls on every page view. User features in, the top-K posts
out; new posts in.

    python -m retrieval.service --workdir RUN [--port 8600] [--rest_api_port 8601]
                                [--model_target HOST:PORT | --model DIR] [--milvus URI]

gRPC (dssm.recall.v1.RecallService: Recall, AddItems, Status; retrieval/service/recall_service.proto)
and REST (POST /v1/recall, POST /v1/items, GET /v1/status) on the same handlers. The user tower is a
TF Serving endpoint (--model_target: this process then never imports TensorFlow) or the run's pushed
model in this process; the posts come from the Milvus generation behind the alias, the read posts'
content vectors from the item store. One Milvus client serves the process: a Milvus Lite file is
held by this process alone while it runs (add posts through the service then, not retrieval.add_items).

Like TF Serving, the service has no authentication or TLS: it binds 127.0.0.1 unless --host says
otherwise. Whoever can reach its ports can recall and add posts; keep it on loopback or behind an
authenticating proxy.
"""
from __future__ import annotations

import os

from common.quiet import quiet, verbose_requested

if __name__ == "__main__":
    quiet(verbose_requested())  # before TensorFlow could load

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

log = logging.getLogger("retrieval.service")

DEFAULT_PORT, DEFAULT_REST_PORT = 8600, 8601


def build_parser() -> argparse.ArgumentParser:
    from serving.http_transport import HttpLimits

    p = argparse.ArgumentParser(prog="python -m retrieval.service", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join("runs", "demo"),
                   help="a run's work directory: its milvus.db and its pushed serving/MODEL_NAME (default: the demo's)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (0: pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=DEFAULT_REST_PORT, help="REST port (0: REST off)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model_target", help="host:port of a TF Serving endpoint serving the towers "
                                              "(this process then never imports TensorFlow)")
    where.add_argument("--model", default=None, help="pushed model base path, run in this process "
                                                     "(default: WORKDIR/serving/MODEL_NAME)")
    p.add_argument("--model_name", default="dssm", help="the served model's name (with --model_target)")
    p.add_argument("--model_timeout_seconds", type=float, default=5.0,
                   help="deadline of each user-tower call (UNAVAILABLE is retried within it)")
    p.add_argument("--milvus", default=None, help="Milvus Lite file or server URI (default: WORKDIR/milvus.db)")
    p.add_argument("--token", default="")
    p.add_argument("--alias", default=None, help="the index alias (default: the pipeline's)")
    p.add_argument("--milvus_timeout_seconds", type=float, default=5.0, help="deadline of each search and read")
    p.add_argument("--spec", default=None, help="feature spec (default: the bundled one)")
    p.add_argument("--skip_model_check", action="store_true",
                   help="do not check at start that the index was filled by this model's item tower")
    p.add_argument("--max_request_bytes", type=int, default=HttpLimits.max_request_bytes,
                   help="largest request (gRPC: RESOURCE_EXHAUSTED; REST: 413 from the headers)")
    p.add_argument("--threads", type=int, default=16, help="gRPC worker threads")
    p.add_argument("--rest_api_num_threads", type=int, default=8, help="REST: threads that compute answers")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=int(HttpLimits.timeout_seconds * 1000),
                   help="REST: time for a request's headers, for its body, and for an idle kept-alive connection")
    p.add_argument("--rest_api_max_connections", type=int, default=HttpLimits.max_connections,
                   help="REST: connections open at once (at the cap the one idle longest makes room)")
    p.add_argument("--port_file", default="", help="write '<grpc port> <rest port>' here once serving")
    p.add_argument("--verbose", action="store_true", help="also TensorFlow's C++ log and third-party warnings")
    return p


class RecallServer:
    """gRPC and REST over one RecallCore; ports bound in the constructor (0 picks a free one)."""

    def __init__(self, core, port: int = 0, rest_api_port: int | None = 0, host: str = "127.0.0.1",
                 threads: int = 16, max_request_bytes: int = 16 << 20, rest_limits=None):
        from concurrent import futures

        import grpc

        from retrieval.service.grpc_api import add_service
        from retrieval.service.rest import RecallRestApp
        from serving.grpc_bind import bind_grpc
        from serving.http_transport import HttpLimits, HttpServer

        self.core, self.host = core, host
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="recall"),
                                 options=[("grpc.max_receive_message_length", max_request_bytes),
                                          ("grpc.so_reuseport", 0)])
        add_service(self._grpc, core)
        self.port = bind_grpc(self._grpc, host, port)
        self._rest = None
        if rest_api_port is not None:
            limits = rest_limits or HttpLimits(threads=8)
            limits = HttpLimits(**{**limits.__dict__, "max_request_bytes": max_request_bytes})
            self._rest = HttpServer(RecallRestApp(core, limits), host, rest_api_port)
        self.rest_port = self._rest.port if self._rest else None

    def start(self) -> RecallServer:
        self._grpc.start()
        if self._rest:
            self._rest.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._grpc.stop(grace).wait()
        if self._rest:
            self._rest.stop()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def open_core(args):
    """RecallCore over the run's index and item store, with the towers the flags name."""
    from retrieval.backends import check_index, open_index
    from retrieval.catalog import ModelVocabulary
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.recall import SavedModelTowers, ServingTowers
    from retrieval.service.core import RecallCore
    from schema.spec import load_spec

    spec = load_spec(args.spec)
    config = IndexConfig(uri=args.milvus or IndexConfig().at(args.workdir).uri, token=args.token,
                         **({"alias": args.alias} if args.alias else {}))
    check_index(config)  # in a second: missing, not Milvus, or held by another process
    index = open_index(config, timeout_seconds=args.milvus_timeout_seconds)
    store = ItemStore(config, spec.item_id, client=index.client, timeout_seconds=args.milvus_timeout_seconds)
    model = args.model or os.path.join(args.workdir, "serving", args.model_name)
    if args.model_target:
        from serving.client import ServingClient

        encoder = ServingTowers(ServingClient(args.model_target, args.model_name,
                                                   timeout=args.model_timeout_seconds))
    else:
        encoder = SavedModelTowers(model)
    return RecallCore(index, store, encoder, ModelVocabulary(model, spec), spec, check_model=not args.skip_model_check)


def main(argv=None) -> None:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import grpc

    from retrieval.index import ItemIndexError
    from serving.grpc_bind import port_in_use
    from serving.http_transport import HttpLimits
    from serving.lifecycle import serve_until_signalled

    for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
        if 0 < port < 65536 and port_in_use(args.host, port):  # in a second, before Milvus starts
            raise SystemExit(f"error: cannot listen on {args.host}:{port} ({flag}): another process listens there; "
                             f"stop it or pick another {flag}")
    try:
        core = open_core(args)
        status = core.status()
        server = RecallServer(core, args.port, args.rest_api_port or None, args.host, args.threads,
                              args.max_request_bytes,
                              HttpLimits(threads=args.rest_api_num_threads,
                                         timeout_seconds=args.rest_api_timeout_in_ms / 1000,
                                         max_connections=args.rest_api_max_connections)).start()
    except (ItemIndexError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        raise SystemExit(f"error: cannot serve on {args.host} (--port {args.port}, --rest_api_port "
                         f"{args.rest_api_port}): {e}") from None
    except grpc.RpcError as e:
        raise SystemExit(f"error: the user tower at {args.model_target}: {e.code().name}: {e.details()}") from None
    print(f"recall service: gRPC {args.host}:{server.port}"
          + (f", REST {args.host}:{server.rest_port}" if server.rest_port else "")
          + f" · generation {status['generation']} (model version {status['model_version']}, "
            f"{status['item_count']:,} posts) · user tower {status['user_tower']} · "
            f"started in {time.monotonic() - started:.1f} s", flush=True)
    serve_until_signalled(server, args.port_file)


if __name__ == "__main__":
    main(sys.argv[1:])
