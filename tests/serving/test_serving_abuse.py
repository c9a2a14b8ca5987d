"""Hostile and heavy traffic against the model server (issue [reliability]): a 50,000-request load
with a quarter of it malformed, path-like model names, and a static check for code that runs what it
reads. Each fault is recorded in the reliability summary (see tests/conftest.py)."""
import collections
import os
import signal

import pytest
import tensorflow as tf

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_serving_under_load_and_abuse(tmp_path, reliability):
    from serving.server import spawn
    from tests.load_driver import EXPECTED, _kind, rss_bytes, run_load
    from tests.serving_models import save_version

    save_version(str(tmp_path / "tiny"), 1)  # y = 0.5 x + 2
    proc, port = spawn(["--model_name", "tiny", "--model_base_path", str(tmp_path / "tiny"),
                        "--max_request_bytes", str(64 * 1024), "--max_request_elements", "10000"],
                       str(tmp_path / "server.log"), timeout=120)
    try:
        report = run_load(f"127.0.0.1:{port}", proc.pid, model="tiny", offset=2.0, total=50_000)
        alive = proc.poll() is None
        rss_end = rss_bytes(proc.pid) if alive else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    rss = dict(report["server_rss_mib"])
    growth = rss[50_000] / rss[10_000] - 1
    kinds = collections.Counter(_kind(i, report["clients"]) for i in range(50_000))  # what was sent
    expected_codes = {f"{k}:{EXPECTED[k]}": kinds[k] for k in EXPECTED}
    clients = report["clients"]
    assert all({_kind(i, clients) for i in range(c, 50_000, clients)} == set(EXPECTED) for c in range(clients))
    hostile = 1 - kinds["valid"] / 50_000
    ok = (report["answered"] == 50_000 and report["wrong_count"] == 0 and alive
          and report["by_kind_and_code"] == expected_codes and growth < 0.10)
    reliability.record("serving load", f"50,000 Predict requests from 16 clients, {hostile:.1%} hostile",
                       "valid answered correctly, hostile get TF Serving's codes, server healthy, RSS +<10%",
                       f"{report['answered']} answered, {report['wrong_count']} wrong, "
                       f"{report['requests_per_s']} req/s,"
                       f" RSS {rss[10_000]} -> {rss[50_000]} MiB ({growth:+.1%}), server alive: {alive}", ok,
                       by_kind_and_code=report["by_kind_and_code"], server_rss_mib=report["server_rss_mib"],
                       seconds=report["seconds"], server_rss_at_exit_mib=round(rss_end / 2**20, 1))
    assert report["client_processes_exited_ok"]
    assert report["answered"] == 50_000 and report["wrong_count"] == 0, report["wrong"]
    assert report["by_kind_and_code"] == expected_codes
    assert alive
    assert growth < 0.10, report["server_rss_mib"]


def test_request_names_never_reach_the_filesystem(tmp_path, reliability):
    """Model names and versions are dictionary keys: '../' or absolute paths find nothing, read nothing.

    inotify watches the model beside the base path: no file or folder of it may be opened."""
    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from serving.model_config import single_model
    from serving.server import ModelServer
    from tests.fs_watch import OpenWatch
    from tests.serving_models import save_version

    save_version(str(tmp_path / "models" / "tiny"), 1)
    save_version(str(tmp_path / "outside"), 3)  # a real model beside the base path: must stay unreachable
    outside = [root for root, _, _ in os.walk(tmp_path / "outside")]
    hostile = ["../outside", "tiny/../../outside", str(tmp_path / "outside"), "..", "tiny/1", "%2e%2e/outside"]
    codes = []
    watch = OpenWatch(outside)
    with ModelServer(single_model("tiny", str(tmp_path / "models" / "tiny")), port=0, poll_seconds=0) as server, \
            grpc.insecure_channel(server.target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
        for name in hostile:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = name
            req.inputs["x"].float_val.append(1.0)
            req.inputs["x"].dtype = tf.float32.as_datatype_enum
            req.inputs["x"].tensor_shape.dim.add().size = 1
            status_req = get_model_status_pb2.GetModelStatusRequest(model_spec=req.model_spec)
            for call, r in ((predict, req), (status, status_req)):
                with pytest.raises(grpc.RpcError) as info:
                    call(r, timeout=10)
                codes.append(info.value.code())
    opened = watch.events()
    # The watch itself must see a read, or an empty list would prove nothing.
    tf.saved_model.load(str(tmp_path / "outside" / "3"))
    control = watch.events()
    watch.close()
    ok = set(codes) == {grpc.StatusCode.NOT_FOUND} and not opened and bool(control)
    reliability.record("security", f"{len(hostile)} path-like model names over Predict and GetModelStatus",
                       "NOT_FOUND for every one; no file of the model outside the base path opened",
                       f"codes {sorted({c.name for c in codes})}; outside files opened: {len(opened)}"
                       f" (a direct load opens {len(control)})", ok)
    assert set(codes) == {grpc.StatusCode.NOT_FOUND}, codes
    assert control, "the inotify watch saw nothing even for a direct load"
    assert not opened, opened


UNSAFE = [(r"\bpickle\.loads?\(|\bcloudpickle\.loads?\(|\bdill\.loads?\(", "unpickling"),
          (r"(?<![\w.])eval\(|(?<![\w.])exec\(", "eval/exec"),
          (r"yaml\.load\((?![^)]*SafeLoader)|yaml\.unsafe_load", "yaml.load without SafeLoader"),
          (r"allow_pickle\s*=\s*True", "np.load with allow_pickle"),
          (r"shell\s*=\s*True", "a shell command line")]


def test_no_code_path_unpickles_or_evaluates_input(reliability):
    """A static check over the project's own sources: none of the calls that run what they read."""
    import re

    hits = []
    for package in ("components", "pipeline", "schema", "serving", "datagen", "run_pipeline.py"):
        paths = [os.path.join(REPO, package)] if package.endswith(".py") else [
            os.path.join(root, f) for root, _, files in os.walk(os.path.join(REPO, package))
            for f in files if f.endswith(".py")]
        for path in paths:
            text = open(path).read()
            hits += [f"{os.path.relpath(path, REPO)}: {why}" for pattern, why in UNSAFE if re.search(pattern, text)]
    reliability.record("security", "unpickle/eval/unsafe yaml/shell calls in the project's sources", "none",
                       f"{len(hits)} found" + (f": {hits}" if hits else ""), not hits)
    assert hits == []


REST_HOSTILE = {
    # kind -> (raw request bytes, the status line's code)
    "negative_length": (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
                        b'{"inputs": [1.0]}', b"400"),
    "smuggled": (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"29\r\nGET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n", b"400"),
    "bad_chunk_framing": (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2b\r\nGET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n", b"400"),
    "oversized": (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
                  b"Expect: 100-continue\r\n\r\n", b"413"),
    "deep_json": (None, b"400"),
    "element_bomb": (None, b"400"),
    "huge_number": (None, b"400"),
    # issue [server-trust]
    "empty_lists": (None, b"400"),        # 12,000 [] : no value, 12,000 entries
    "nan": (None, b"400"),
    "overflow": (None, b"400"),           # 1e400
    "bool_number": (None, b"400"),        # true for a float input
    "signature_list": (None, b"400"),
    "lone_surrogate": (None, b"400"),
    "missing_model_long_string": (None, b"404"),
    "repeated_length": (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 99999999999, 99999999999\r\n\r\n", b"413"),
    "half_closed": (None, b"200"),        # the whole request, then the client shuts down its sending side
    "chunk_trailer": (None, b"200"),      # a chunk extension and a trailer field
}


def _post(body: bytes) -> bytes:
    return (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _hostile_request(kind: str) -> bytes:
    raw, _ = REST_HOSTILE[kind]
    if raw is not None:
        return raw
    if kind == "deep_json":
        return _post(b"[" * 20_000 + b"]" * 20_000)
    if kind == "element_bomb":
        return _post(b'{"inputs": [' + b",".join([b"0"] * 20_000) + b"]}")
    if kind == "huge_number":
        return _post(b'{"inputs": [' + b"9" * 5000 + b"]}")
    if kind == "chunk_trailer":
        body = b'{"inputs": [2.0]}'
        return (b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(body):x};ext=1\r\n".encode() + body + b"\r\n0\r\nX-Trailer: 1\r\n\r\n")
    if kind == "missing_model_long_string":
        body = b'"' + b"a" * 200_000 + b'"'
        return (b"POST /v1/models/no_such_model:predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    return _post({"empty_lists": b'{"inputs": [' + b",".join([b"[]"] * 12_000) + b"]}",
                  "nan": b'{"inputs": [1.0, NaN]}', "overflow": b'{"inputs": [1e400]}',
                  "bool_number": b'{"inputs": [true]}', "signature_list": b'{"signature_name": ["x"], "inputs": [1.0]}',
                  "lone_surrogate": b'{"signature_name": "echo", "inputs": ["\\ud800"]}',
                  "half_closed": b'{"inputs": [2.0]}'}[kind])


def _raw_exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        s.settimeout(2)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply and b"Content-Length" not in reply.split(b"\r\n\r\n")[0]:
                    break
                head, _, body = reply.partition(b"\r\n\r\n")
                length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                if length and len(body) >= length[0]:
                    break
        except TimeoutError:
            pass
    return reply


def test_rest_under_load_and_abuse(tmp_path, reliability):
    """8 kept-alive REST clients send valid predictions (checked against 0.5 x + 2) while 8 others
    send the hostile requests of issues [serving-hardening] and [server-trust]: lying lengths,
    smuggling, oversized, deep, element-bomb and huge-number bodies, empty lists, NaN / overflow /
    boolean numbers, malformed fields, long strings to a missing model, repeated lengths, and the
    legal oddities (half-closed connections, chunk extensions and trailers) that must be answered.
    The server stays alive, answers every valid request
    correctly, answers every hostile one with its code, and its memory grows by less than 64 MiB."""
    import http.client
    import json
    import socket
    import threading

    import numpy as np

    from serving.server import spawn
    from tests.load_driver import rss_bytes
    from tests.serving_models import save_version

    save_version(str(tmp_path / "tiny"), 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rest = s.getsockname()[1]
    proc, _ = spawn(["--model_name", "tiny", "--model_base_path", str(tmp_path / "tiny"), "--rest_api_port",
                     str(rest), "--max_request_bytes", str(256 * 1024), "--max_request_elements", "10000",
                     "--rest_api_timeout_in_ms", "2000"], str(tmp_path / "server.log"), timeout=120)
    wrong, codes, lock = [], collections.Counter(), threading.Lock()
    per_client = 300

    def valid_client(seed):
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", rest, timeout=30)
        for _ in range(per_client):
            x = rng.standard_normal(int(rng.integers(1, 9))).astype(np.float32)
            conn.request("POST", "/v1/models/tiny:predict", body=json.dumps({"inputs": x.tolist()}))
            response = conn.getresponse()
            body = json.loads(response.read())
            ok = response.status == 200 and np.array_equal(np.float32(body["outputs"]), np.float32(0.5) * x + 2)
            with lock:
                codes["valid:" + str(response.status)] += 1
                if not ok:
                    wrong.append((x.tolist(), response.status, body))

    def hostile_client(seed):
        kinds = sorted(REST_HOSTILE)
        for i in range(per_client // 3):
            kind = kinds[(seed + i) % len(kinds)]
            reply = _raw_exchange(rest, _hostile_request(kind), half_close=kind == "half_closed")
            code = reply[9:12]
            with lock:
                codes[f"{kind}:{code.decode(errors='replace')}"] += 1
                if code != REST_HOSTILE[kind][1] or reply.count(b"HTTP/1.1 ") != 1:
                    wrong.append((kind, reply[:120]))

    try:
        warm = [threading.Thread(target=valid_client, args=(100,))]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        codes.clear()  # the warm-up is not counted
        rss_before = rss_bytes(proc.pid)
        threads = ([threading.Thread(target=valid_client, args=(i,)) for i in range(8)]
                   + [threading.Thread(target=hostile_client, args=(i,)) for i in range(8)])
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alive = proc.poll() is None
        rss_after = rss_bytes(proc.pid) if alive else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    growth_mib = (rss_after - rss_before) / 2**20
    hostile_sent = sum(v for k, v in codes.items() if not k.startswith("valid"))
    ok = alive and not wrong and codes["valid:200"] == 8 * per_client and growth_mib < 64
    reliability.record("serving load", f"REST: {8 * per_client} kept-alive valid requests beside {hostile_sent} "
                       "hostile ones (lying lengths, smuggling, oversized, deep, element bombs, huge numbers, "
                       "empty lists, NaN, malformed fields, long strings, half-closed)",
                       "valid answered correctly, hostile get 400/404/413 (odd but legal: 200) once each, server "
                       "alive, RSS +<64 MiB",
                       f"{codes['valid:200']} valid OK, {len(wrong)} wrong, RSS {rss_before / 2**20:.0f} -> "
                       f"{rss_after / 2**20:.0f} MiB ({growth_mib:+.1f}), alive: {alive}", ok, codes=dict(codes))
    assert alive
    assert not wrong, wrong[:5]
    assert codes["valid:200"] == 8 * per_client
    assert growth_mib < 64, (rss_before, rss_after)
