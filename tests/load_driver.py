"""A bounded load test against a model server serving tests/serving_models.py's tiny model.

16 concurrent clients (4 processes x 4 threads, each thread its own channel) send a fixed mix of
valid and hostile Predict requests. Every valid answer is checked against y = 0.5 * x + offset
computed here with numpy; every hostile one against the status code TF Serving gives. The server's
resident memory is read from /proc after each 10,000 answered requests.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

# kind -> expected status code name ("OK" for valid requests); each client cycles through the 20-request mix.
EXPECTED = {
    "valid": "OK",
    "oversized": "RESOURCE_EXHAUSTED",   # larger than the server's --max_request_bytes
    "wrong_dtype": "INVALID_ARGUMENT",   # int64 for a float input
    "unknown_model": "NOT_FOUND",
    "unknown_signature": "FAILED_PRECONDITION",
    "garbage": "INTERNAL",               # bytes that are no PredictRequest: gRPC cannot parse them
    "element_bomb": "INVALID_ARGUMENT",  # ~20 bytes declaring [200000] elements filled by one value
    "shape_overflow": "INVALID_ARGUMENT",  # a shape whose element count overflows int64
    "empty_dims": "INVALID_ARGUMENT",    # [20000, 0]: no value, 20,000 entries
    "nan": "INVALID_ARGUMENT",           # NaN is not a number of the logs' grammar
}
MIX = ["valid"] * 15 + ["oversized", "wrong_dtype", "unknown_model", "unknown_signature", "garbage",
                        "element_bomb", "shape_overflow", "empty_dims", "nan"]
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f not a protobuf"  # field 1 claims a length far past the end


def _kind(i: int, clients: int) -> str:
    """Request i is the (i // clients)-th of client i % clients, whose cycle starts at its own offset:
    every client sends every kind, and the clients do not all send the same kind at once."""
    return MIX[(i // clients + i % clients) % len(MIX)]


def _hostile_or_valid(request, kind: str, x: np.ndarray, oversized_floats: int):
    if kind == "valid":
        return request(x=x)
    if kind == "oversized":
        return request(x=np.zeros(oversized_floats, np.float32))
    if kind == "wrong_dtype":
        return request(x=x.astype(np.int64))
    if kind == "unknown_model":
        return request(name="no_such_model", x=x)
    if kind in ("element_bomb", "shape_overflow", "empty_dims"):
        req = request(x=x[:1])
        del req.inputs["x"].tensor_shape.dim[:]
        del req.inputs["x"].float_val[:]
        for size in {"element_bomb": [200_000], "shape_overflow": [2**62, 2**62], "empty_dims": [20_000, 0]}[kind]:
            req.inputs["x"].tensor_shape.dim.add(size=size)
        if kind != "empty_dims":
            req.inputs["x"].float_val.append(1.0)
        return req
    if kind == "nan":
        return request(x=np.array([1.0, np.nan], np.float32))
    return request(signature="no_such_signature", x=x)


def _client(target: str, model: str, offset: float, oversized_floats: int, clients: int, indices, counter,
            results) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.tensors import array_to_proto

    def request(name=model, signature="", **inputs):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        req.model_spec.signature_name = signature
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(array_to_proto(v))
        return req

    tally = {"answered": 0, "wrong": [], "codes": {}}
    rng = np.random.default_rng(indices[0])
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for i in indices:
            kind = _kind(i, clients)
            x = rng.standard_normal(int(rng.integers(1, 9))).astype(np.float32)
            try:
                if kind == "garbage":
                    raw(GARBAGE, timeout=30)
                    code, y = "OK", None
                else:
                    req = _hostile_or_valid(request, kind, x, oversized_floats)
                    resp = stub.Predict(req, timeout=30)
                    code, y = "OK", np.asarray(resp.outputs["y"].float_val, np.float32)
            except grpc.RpcError as e:
                code, y = e.code().name, None
            tally["codes"][f"{kind}:{code}"] = tally["codes"].get(f"{kind}:{code}", 0) + 1
            if code != EXPECTED[kind]:
                tally["wrong"].append((i, kind, code))
            elif kind == "valid" and not np.array_equal(y, np.float32(0.5) * x + np.float32(offset)):
                tally["wrong"].append((i, kind, f"y={y.tolist()} for x={x.tolist()}"))
            tally["answered"] += 1
            with counter.get_lock():
                counter.value += 1
    results.put(tally)


def _process(target, model, offset, oversized_floats, clients, threads_indices, counter, results) -> None:
    threads = [threading.Thread(target=_client,
                                args=(target, model, offset, oversized_floats, clients, ix, counter, results))
               for ix in threads_indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run_load(target: str, server_pid: int, *, model: str, offset: float, total: int = 50_000,
             processes: int = 4, threads: int = 4, oversized_floats: int = 32_768,
             rss_every: int = 10_000) -> dict:
    """Sends `total` requests from processes x threads clients; returns the tally."""
    ctx = mp.get_context("spawn")  # no forked gRPC or TensorFlow state
    counter, results = ctx.Value("q", 0), ctx.Queue()
    clients = processes * threads
    per_client = [list(range(c, total, clients)) for c in range(clients)]
    procs = [ctx.Process(target=_process, args=(target, model, offset, oversized_floats, clients,
                                                per_client[p * threads:(p + 1) * threads], counter, results))
             for p in range(processes)]
    started = time.monotonic()
    for p in procs:
        p.start()
    rss, next_mark = [(0, rss_bytes(server_pid))], rss_every
    tallies = []
    while len(tallies) < clients:
        while counter.value >= next_mark:
            rss.append((next_mark, rss_bytes(server_pid)))
            next_mark += rss_every
        try:
            tallies.append(results.get(timeout=0.05))
        except Exception:  # queue.Empty
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    for p in procs:
        p.join(timeout=30)
    while counter.value >= next_mark:  # the marks passed during the last few answers
        rss.append((next_mark, rss_bytes(server_pid)))
        next_mark += rss_every
    seconds = time.monotonic() - started
    codes: dict[str, int] = {}
    for t in tallies:
        for k, n in t["codes"].items():
            codes[k] = codes.get(k, 0) + n
    return {"requests": total, "clients": clients, "answered": sum(t["answered"] for t in tallies),
            "client_processes_exited_ok": all(p.exitcode == 0 for p in procs),
            "wrong": [w for t in tallies for w in t["wrong"]][:20],
            "wrong_count": sum(len(t["wrong"]) for t in tallies),
            "by_kind_and_code": dict(sorted(codes.items())), "seconds": round(seconds, 1),
            "requests_per_s": round(total / seconds, 1),
            "server_rss_mib": [(n, round(b / 2**20, 1)) for n, b in rss]}
