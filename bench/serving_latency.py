"""user_embedding Predict latency at batch 1 and throughput under 8 concurrent clients, over gRPC and
over REST to the model server (a separate process on loopback), next to calling the same signature
in-process (the floor), in one run. REST clients keep their connection alive (one
http.client.HTTPConnection each), as requests.Session, curl and proxies do.

    .venv/bin/python bench/serving_latency.py [--serving-dir runs/demo/serving] [--requests 2000]
        [--server-checkout DIR]   # the server code of another checkout (e.g. a git worktree of main)
        [--hostile-clients 4]     # processes sending 16 MB hostile REST bodies while a gRPC client measures

Needs a pushed model (make demo). Every answer is checked against the in-process vector; the bench
counts errors and wrong answers.
"""
import argparse
import base64
import glob
import http.client
import json
import os
import socket
import tempfile
import threading
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from schema.item_vectors import VectorTable  # noqa: E402
from schema.spec import load_spec  # noqa: E402
from serving.client import ServingClient, read_log_lines  # noqa: E402
from serving.examples import ExampleBuilder  # noqa: E402
from serving.servables import versions_on_disk  # noqa: E402
from serving.server import spawn  # noqa: E402
from serving.tensors import array_to_proto  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def in_process(model_dir: str, example: bytes, n: int) -> tuple[dict, np.ndarray]:
    fn = tf.saved_model.load(model_dir).signatures["user_embedding"]
    expected = fn(examples=tf.constant([example]))["embedding"].numpy()
    for _ in range(50):
        fn(examples=tf.constant([example]))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(examples=tf.constant([example]))["embedding"].numpy()
        times.append(time.perf_counter() - t)
    return percentiles(times), expected


def grpc_calls(target: str, request, n: int, expected: np.ndarray, times: list, errors: list) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(n):
            t = time.perf_counter()
            try:
                resp = stub.Predict(request, timeout=10)
                vector = np.array(resp.outputs["embedding"].float_val, np.float32)
                times.append(time.perf_counter() - t)
                if not np.allclose(vector, expected.ravel(), atol=1e-5):
                    errors.append("wrong answer")
            except grpc.RpcError as e:
                errors.append(e.code().name)


def rest_calls(port: int, body: bytes, n: int, expected: np.ndarray, times: list, errors: list, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        t = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            times.append(time.perf_counter() - t)
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
            elif not np.allclose(np.array(payload["predictions"][0], np.float32), expected.ravel(), atol=1e-5):
                errors.append("wrong answer")
        except (OSError, http.client.HTTPException) as e:
            errors.append(type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


HOSTILE_BODIES = {
    # what stalled the whole server before issue [server-trust]: 16 s each, 14.8 s for another client's gRPC call
    "long string to a missing model": ("/v1/models/no_such_model:predict", b'"' + b"a" * (16 * 1024 * 1024) + b'"'),
    "deep nesting": (None, b"[" * (4 * 1024 * 1024) + b"]" * (4 * 1024 * 1024)),
}


def hostile_client(port: int, rest_path: str, stop, sent) -> None:
    """Sends the hostile bodies in turn, in its own process, until `stop` is set; counts what it sent.
    With --nice-hostile it runs at the lowest CPU priority: on a 2-core machine four processes that
    send 16 MB in a loop take CPU from everyone, whatever the server does with their bodies."""
    if NICE[0]:
        os.nice(19)
    kinds = sorted(HOSTILE_BODIES)
    i = 0
    while not stop.is_set():
        path, body = HOSTILE_BODIES[kinds[i % len(kinds)]]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                s.sendall(f"POST {path or rest_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
                          .encode() + body)
                s.recv(4096)
        except OSError:
            pass
        with sent.get_lock():
            sent.value += 1
        i += 1


NICE = [False]


def _with_hostile_clients(port: int, rest_path: str, clients: int, measure) -> tuple[list, int]:
    import multiprocessing as mp

    stop, sent = mp.Event(), mp.Value("i", 0)
    procs = [mp.Process(target=hostile_client, args=(port, rest_path, stop, sent), daemon=True) for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # the first bodies in flight
    try:
        times = measure()
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=120)
            if p.is_alive():
                p.kill()
    return times, sent.value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(call, clients: int, per_client: int) -> tuple[list, float]:
    times = []
    threads = [threading.Thread(target=call, args=(per_client, times)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serving-dir", default=os.path.join(HERE, "runs", "demo", "serving"))
    p.add_argument("--model", default="dssm")
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per measurement")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--server-args", default="", help='extra server flags, e.g. "--tensorflow_intra_op_parallelism 1"')
    p.add_argument("--server-checkout", default=None, help="run the server code of this checkout")
    p.add_argument("--hostile-clients", type=int, default=4, help="processes sending hostile REST bodies meanwhile")
    p.add_argument("--nice-hostile", action="store_true",
                   help="hostile clients at the lowest CPU priority (their own sending is not the server's cost)")
    args = p.parse_args()
    NICE[0] = args.nice_hostile

    base = os.path.join(args.serving_dir, args.model)
    versions = versions_on_disk(base)
    if not versions:
        raise SystemExit(f"no pushed model under {base}: run `make demo` first")
    model_dir = versions[max(versions)]
    line = read_log_lines(os.path.join(HERE, "data", "sample", "eval.tsv"), 1, load_spec())[0]
    vectors = glob.glob(os.path.join(os.path.dirname(os.path.abspath(args.serving_dir)), "item_vectors", "*"))
    if not vectors:
        raise SystemExit(f"no prepared item vectors beside {args.serving_dir}: the run's item_vectors/ folder")
    example = ExampleBuilder(load_spec(), VectorTable.load(vectors[0])).from_log_line(line)

    floor, expected = in_process(model_dir, example, args.requests)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model
    request.model_spec.signature_name = "user_embedding"
    request.inputs["examples"].CopyFrom(array_to_proto(np.array([example], dtype=object)))

    rest_body = json.dumps({"signature_name": "user_embedding",
                            "instances": [{"b64": base64.b64encode(example).decode()}]}).encode()
    rest_path = f"/v1/models/{args.model}:predict"
    per_client = max(args.requests // args.clients, 1)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = spawn(["--model_name", args.model, "--model_base_path", base, "--rest_api_port", str(_free_port()),
                            *args.server_args.split()], os.path.join(tmp, "server.log"), 180,
                           cwd=args.server_checkout)
        target, rest_port = f"127.0.0.1:{port}", proc.rest_port
        errors = []
        try:
            ServingClient(target, args.model, timeout=120).wait_until_available(120)
            grpc_calls(target, request, 50, expected, [], errors)
            seq_times = []
            grpc_calls(target, request, args.requests, expected, seq_times, errors)
            load_times, wall = _load(lambda n, times: grpc_calls(target, request, n, expected, times, errors),
                                     args.clients, per_client)
            rest_calls(rest_port, rest_body, 50, expected, [], errors, rest_path)
            rest_seq = []
            rest_calls(rest_port, rest_body, args.requests, expected, rest_seq, errors, rest_path)
            rest_load, rest_wall = _load(
                lambda n, times: rest_calls(rest_port, rest_body, n, expected, times, errors, rest_path),
                args.clients, per_client)
            hostile_n = max(args.requests // 4, 50)

            def measure():
                times = []
                grpc_calls(target, request, hostile_n, expected, times, errors)
                return times

            hostile_times, hostile_sent = _with_hostile_clients(rest_port, rest_path, args.hostile_clients, measure)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"model {model_dir}, user_embedding, batch 1, {args.requests} requests each; {os.cpu_count()} CPUs; "
          f"server: {args.server_checkout or 'this checkout'}, flags: {args.server_args or '(none)'}")
    print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'req/s':>10}")

    def row(name, times, wall=None):
        q = percentiles(times)
        rate = len(times) / wall if wall else 1000 / q["mean_ms"]
        print(f"{name:<34}{q['p50_ms']:>10}{q['p99_ms']:>10}{q['mean_ms']:>10}{rate:>10.0f}")
        return q

    print(f"{'in-process signature':<34}{floor['p50_ms']:>10}{floor['p99_ms']:>10}{floor['mean_ms']:>10}"
          f"{1000 / floor['mean_ms']:>10.0f}")
    grpc_seq = row("gRPC, 1 client", seq_times)
    row(f"gRPC, {args.clients} clients", load_times, wall)
    rest_q = row("REST kept-alive, 1 client", rest_seq)
    row(f"REST kept-alive, {args.clients} clients", rest_load, rest_wall)
    hostile_q = row(f"gRPC, 1 client, {args.hostile_clients} hostile", hostile_times)
    print(f"valid p50 beside {args.hostile_clients} hostile REST clients{' (niced)' if args.nice_hostile else ''} "
          f"({hostile_sent} bodies of "
          f"{' / '.join(HOSTILE_BODIES)}): {hostile_q['p50_ms'] / grpc_seq['p50_ms']:.2f}x the quiet p50 (goal <= 3x)")
    print(f"p50 overhead over in-process: gRPC {grpc_seq['p50_ms'] - floor['p50_ms']:.3f} ms (goal <= 1 ms), "
          f"REST {rest_q['p50_ms'] - floor['p50_ms']:.3f} ms (goal <= 1.5 ms)")
    print(f"errors or wrong answers: {len(errors)} {sorted(set(errors)) if errors else ''}")


if __name__ == "__main__":
    main()
