"""user_embedding Predict latency at batch 1 and throughput under 8 concurrent clients, over gRPC to
the model server (a separate process on loopback), next to calling the same signature in-process
(the floor), in one run.

    .venv/bin/python bench/serving_latency.py [--serving-dir runs/demo/serving] [--requests 2000]

Needs a pushed model (make demo). Every answer is checked against the in-process vector; the bench
counts errors and wrong answers.
"""
import argparse
import os
import tempfile
import threading
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serving-dir", default=os.path.join(HERE, "runs", "demo", "serving"))
    p.add_argument("--model", default="dssm")
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per measurement")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--server-args", default="", help='extra server flags, e.g. "--tensorflow_intra_op_parallelism 1"')
    args = p.parse_args()

    base = os.path.join(args.serving_dir, args.model)
    versions = versions_on_disk(base)
    if not versions:
        raise SystemExit(f"no pushed model under {base}: run `make demo` first")
    model_dir = versions[max(versions)]
    line = read_log_lines(os.path.join(HERE, "data", "sample", "eval.tsv"), 1)[0]
    example = ExampleBuilder(load_spec()).from_log_line(line)

    floor, expected = in_process(model_dir, example, args.requests)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model
    request.model_spec.signature_name = "user_embedding"
    request.inputs["examples"].CopyFrom(array_to_proto(np.array([example], dtype=object)))

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = spawn(["--model_name", args.model, "--model_base_path", base, *args.server_args.split()],
                           os.path.join(tmp, "server.log"), 180)
        target = f"127.0.0.1:{port}"
        try:
            ServingClient(target, args.model, timeout=120).wait_until_available(120)
            warm_times, errors = [], []
            grpc_calls(target, request, 50, expected, warm_times, errors)
            seq_times = []
            grpc_calls(target, request, args.requests, expected, seq_times, errors)
            load_times = []
            per_client = max(args.requests // args.clients, 1)
            threads = [threading.Thread(target=grpc_calls, args=(target, request, per_client, expected, load_times,
                                                                   errors)) for _ in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    grpc_seq = percentiles(seq_times)
    print(f"model {model_dir}, user_embedding, batch 1, {args.requests} requests each; {os.cpu_count()} CPUs; "
          f"server flags: {args.server_args or '(none)'}")
    print(f"{'path':<28}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'req/s':>10}")
    print(f"{'in-process signature':<28}{floor['p50_ms']:>10}{floor['p99_ms']:>10}{floor['mean_ms']:>10}"
          f"{1000 / floor['mean_ms']:>10.0f}")
    print(f"{'gRPC, 1 client':<28}{grpc_seq['p50_ms']:>10}{grpc_seq['p99_ms']:>10}{grpc_seq['mean_ms']:>10}"
          f"{1000 / grpc_seq['mean_ms']:>10.0f}")
    loaded = percentiles(load_times)
    print(f"{f'gRPC, {args.clients} clients':<28}{loaded['p50_ms']:>10}{loaded['p99_ms']:>10}"
          f"{loaded['mean_ms']:>10}{len(load_times) / wall:>10.0f}")
    print(f"p50 overhead of gRPC over in-process: {grpc_seq['p50_ms'] - floor['p50_ms']:.3f} ms (goal <= 1 ms)")
    print(f"errors or wrong answers: {len(errors)} {sorted(set(errors)) if errors else ''}")


if __name__ == "__main__":
    main()
