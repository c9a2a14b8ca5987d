"""Client for any TF Serving endpoint (this project's server or tensorflow_model_server).

    python -m serving.client [--target 127.0.0.1:8500] [--model dssm] user --features '{"client_type": 1, ...}'
    python -m serving.client item --log-line "$(sed -n 2p data/sample/eval.tsv)"
    python -m serving.client user --log-file data/sample/eval.tsv --limit 3

One JSON line per user (or post): {"user": {"source", "line" or "index", "client_id"}, "embedding": [...]}.

Each call has a deadline; UNAVAILABLE (server starting, restarting, a dropped connection) is retried
with exponential backoff inside that deadline. Every other error is raised at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grpc
import numpy as np

from common import tf_protos
from common.quiet import quiet, verbose_requested
from common.user_input_args import add_user_input_args, check_user_input_args

if __name__ == "__main__":
    quiet(verbose_requested())
tf_protos.load()  # TF Serving's messages without TensorFlow's runtime: this client never imports it
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common import signature_names  # noqa: E402
from serving.tensors import array_to_proto, proto_to_array  # noqa: E402

EXAMPLES_INPUT = "examples"


class ServingClient:
    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = signature_names.MODEL_NAME,
                 timeout: float = 5.0, retries: int = 4, backoff_seconds: float = 0.1,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.target, self.model_name, self.timeout = target, model_name, timeout
        self.retries, self.backoff_seconds = retries, backoff_seconds
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # After an outage gRPC waits up to 120 s between connection attempts by default, so a server
            # that is back would go unseen; 1 s at most, which the retries below (1.5 s in all) cover.
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        """method(request) within one overall deadline, retrying UNAVAILABLE."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as e:
                pause = self.backoff_seconds * 2 ** attempt
                if (e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries
                        or time.monotonic() + pause >= deadline):
                    raise
                time.sleep(pause)

    def _spec(self, request, signature: str | None = None, version: int | None = None):
        request.model_spec.name = self.model_name
        if signature is not None:
            request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        return request

    def predict(self, inputs: dict, signature: str = "serving_default", version: int | None = None
                ) -> tuple[dict[str, np.ndarray], int]:
        """(outputs as numpy arrays, the version that answered)."""
        request = self._spec(predict_pb2.PredictRequest(), signature, version)
        for alias, value in inputs.items():
            request.inputs[alias].CopyFrom(array_to_proto(np.asarray(value)))
        response = self._call(self._predict.Predict, request)
        outputs = {k: proto_to_array(v, k, v.dtype, i) for i, (k, v) in enumerate(response.outputs.items())}
        return outputs, response.model_spec.version.value

    def embeddings(self, signature: str, serialized_examples: list[bytes], version: int | None = None) -> np.ndarray:
        outputs, _ = self.predict({EXAMPLES_INPUT: np.array(serialized_examples, dtype=object)}, signature, version)
        return outputs["embedding"]

    def signature_defs(self, version: int | None = None):
        request = self._spec(get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
                             version=version)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        self._call(self._predict.GetModelMetadata, request).metadata["signature_def"].Unpack(sig_map)
        return dict(sig_map.signature_def)

    def version_states(self) -> dict[int, tuple[str, str]]:
        """{version: (state, error message)} from GetModelStatus."""
        response = self._call(self._models.GetModelStatus,
                              self._spec(get_model_status_pb2.GetModelStatusRequest()))
        return {s.version: (get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_message)
                for s in response.model_version_status}

    def wait_until_available(self, timeout: float = 60.0) -> int:
        """Polls GetModelStatus until a version is AVAILABLE (as TFX's InfraValidator does); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.version_states()
                available = [v for v, (s, _) in states.items() if s == "AVAILABLE"]
                if available:
                    return max(available)
                failed = {v: error for v, (s, error) in states.items() if s == "END" and error}
                if failed and len(failed) == len(states):  # every version failed to load: no point waiting
                    raise RuntimeError(f"{self.model_name}: no version loaded: "
                                       + "; ".join(f"version {v}: {e}" for v, e in sorted(failed.items())))
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.model_name} at {self.target}: no version AVAILABLE after {timeout:.0f} s")
            time.sleep(0.2)


class TowerClient:
    """User and item embeddings from raw feature values or log lines (built per the feature spec, the
    posts' content vectors from `content`: the item store)."""

    def __init__(self, client: ServingClient, spec, content):
        from serving.examples import ExampleBuilder

        self.client = client
        self.examples = ExampleBuilder(spec, content)

    def user_embeddings(self, rows: list[dict]) -> np.ndarray:
        return self.client.embeddings(signature_names.USER, [self.examples.from_features(r) for r in rows])

    def item_embeddings(self, rows: list[dict]) -> np.ndarray:
        return self.client.embeddings(signature_names.ITEM, [self.examples.from_features(r) for r in rows])

    def embeddings_from_log_lines(self, tower: str, lines: list[str]) -> np.ndarray:
        signature = signature_names.USER if tower == "user" else signature_names.ITEM
        return self.client.embeddings(signature, [self.examples.from_log_line(line) for line in lines])


class _Counted:
    """A content lookup that counts the posts it has no vector for (sent as zeros)."""

    def __init__(self, table):
        self.table, self.dim, self.unknown = table, table.dim, 0

    def vectors(self, ids):
        out = self.table.vectors(ids)
        self.unknown += int((~out.any(axis=1)).sum())
        return out


def run_vectors(workdir: str):
    """The content vectors of a run's vector file (its newest prepared folder). The client is a tool of
    the serving layer: posts added since the run (retrieval.add_items) are in the item store, which
    retrieval.recall reads; here they have no vector, and the client says how many."""
    import glob

    from schema.item_vectors import META_FILE, VectorTable

    prepared = sorted(glob.glob(os.path.join(workdir, "item_vectors", "*", META_FILE)), key=os.path.getmtime)
    if not prepared:
        raise ValueError(f"no prepared item vectors under {workdir}/item_vectors: give --workdir of a run")
    return _Counted(VectorTable.load(os.path.dirname(prepared[-1])))


def read_log_lines(path: str, limit: int, spec) -> list[str]:
    """The first `limit` data lines of a log file (plain or .gz), in the spec's column order whatever
    the order of the file's header (schema.logfiles.read_log)."""
    from schema.logfiles import read_log

    return [line for _, line in read_log(path, spec, limit)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:8500", help="host:port of the gRPC endpoint")
    p.add_argument("--model", default=signature_names.MODEL_NAME, help="model name as served")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    p.add_argument("--retries", type=int, default=4, help="retries on UNAVAILABLE (0.1 s, doubling each time)")
    p.add_argument("--spec", default=None, help="feature spec YAML (default: schema/feature_spec.yaml)")
    p.add_argument("--workdir", default=os.path.join("runs", "demo"),
                   help="the run whose vector file gives the posts' content vectors (WORKDIR/item_vectors/)")
    p.add_argument("tower", choices=["user", "item"])
    add_user_input_args(p)
    p.add_argument("--verbose", action="store_true", help="also third-party warnings")
    args = p.parse_args(argv)
    check_user_input_args(args)

    from schema.logfiles import read_log
    from schema.spec import load_spec
    from serving.examples import FeatureError

    spec = load_spec(args.spec)
    id_column = spec.user_id if args.tower == "user" else spec.item_id
    try:
        # the log first: a file whose header is not the spec's is one line before the vectors load
        numbered = list(read_log(args.log_file, spec, args.limit)) if args.log_file else [(None, args.log_line)]
        lines = [line for _, line in numbered]
        content = run_vectors(args.workdir)
    except ValueError as e:  # LogFileError too
        raise SystemExit(f"error: {e}") from None
    with ServingClient(args.target, args.model, args.timeout, args.retries) as client:
        towers = TowerClient(client, spec, content)
        try:
            if args.features:
                rows = json.loads(args.features)
                rows = rows if isinstance(rows, list) else [rows]
                vectors = (towers.user_embeddings if args.tower == "user" else towers.item_embeddings)(rows)
                whose = [{"source": "--features", "index": n, id_column: str(r.get(id_column, "")) or None}
                         if isinstance(r, dict) else {"source": "--features", "index": n}
                         for n, r in enumerate(rows, start=1)]
            else:
                vectors = towers.embeddings_from_log_lines(args.tower, lines)
                whose = [{"source": args.log_file or "--log-line", **({"line": n} if n else {}),
                          id_column: dict(zip(spec.columns, line.rstrip("\r\n").split("\t"),
                                              strict=False)).get(id_column) or None}
                         for n, line in numbered]
        except (FeatureError, json.JSONDecodeError) as e:
            raise SystemExit(f"error: {e}") from None
        except grpc.RpcError as e:
            raise SystemExit(f"error: {e.code().name}: {e.details()}") from None
    if content.unknown:
        print(f"note: {content.unknown} post(s) have no vector in {args.workdir}'s vector file (added since the "
              "run?): sent as zeros; retrieval.recall reads the item store", file=sys.stderr)
    for who, v in zip(whose, vectors, strict=True):  # whose vector each is: a user or a post, and where from
        print(json.dumps({args.tower: who, "embedding": [round(float(x), 6) for x in v]}))


if __name__ == "__main__":
    main(sys.argv[1:])
