"""Issue [recall-service]: recall as one online service (python -m retrieval.service), gRPC and REST on
the same handlers, over real sockets, real Milvus Lite and the project's model server.

The expected hits are worked out here with numpy: the user vector from the model server's Predict,
every item vector of the generation read back from Milvus, cosine, the read posts left out.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from tests.conftest import REPO, copy_pushed_run, free_port

USER = {"client_id": "u7", "client_type": 1, "follow_topic_id": ["3", "8"], "read_post_id": ["p1", "p2", "p3"]}
K = 10


def _stubs():
    from retrieval.service import protos

    return protos.load()


@pytest.fixture(scope="module")
def served_run(runs, tmp_path_factory):
    """(workdir with a copy of the shared run's Lite file, the model server {"proc"}, its target, its
    port, the shared run's workdir)."""
    from serving.server import spawn

    workdir, _, _ = runs
    tmp = tmp_path_factory.mktemp("service")
    copy_pushed_run(runs, tmp, tmp_path_factory)
    port = free_port()
    model, _ = spawn(["--port", str(port), "--model_name", "dssm", "--model_base_path", str(tmp / "serving" / "dssm")],
                     str(tmp / "model-server.log"), timeout=120)
    holder = {"proc": model}
    yield str(tmp), holder, f"127.0.0.1:{port}", port, workdir
    holder["proc"].kill()
    holder["proc"].wait()


def _expected(workdir, target, features, k, exclude):
    """By hand, before the service holds the Lite file: the top-k ids and scores (numpy cosine)."""
    from milvus_lite.server_manager import server_manager_instance

    from common import signature_names
    from retrieval.backends import open_index
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from schema.spec import load_spec
    from serving.client import ServingClient
    from serving.examples import ExampleBuilder

    spec = load_spec()
    config = IndexConfig(uri=os.path.join(workdir, "milvus.db"))
    index = open_index(config)
    try:
        generation, version = index.generation()
        rows = index.stored_items(generation, spec.item_id, 16384)
        store = ItemStore(config, spec.item_id, client=index.client)
        example = ExampleBuilder(spec, store).from_features(features)
        with ServingClient(target, "dssm") as client:
            user = client.embeddings(signature_names.USER, [example], version)[0]
    finally:
        index.close()
        server_manager_instance.release_server(config.uri)
    items = np.asarray([r["vector"] for r in rows], np.float64)
    scores = items @ (user / np.linalg.norm(user)) / np.linalg.norm(items, axis=1)
    order = [i for i in np.argsort(-scores, kind="stable") if rows[i][spec.item_id] not in exclude][:k]
    return generation, version, [(rows[i][spec.item_id], float(scores[i])) for i in order], rows, user


class Service:
    """`python -m retrieval.service` in its own process, on free ports."""

    def __init__(self, workdir, log_path, *flags):
        port_file = os.path.join(workdir, f"service-port-{time.monotonic_ns()}")
        self.log_path = log_path
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "retrieval.service", "--workdir", workdir,
                                          "--port", "0", "--rest_api_port", str(free_port()), "--port_file", port_file,
                                          *flags],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not os.path.exists(port_file):
            assert self.proc.poll() is None, open(log_path).read()[-3000:]
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        self.port, self.rest_port = (int(p) for p in open(port_file).read().split())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = _stubs()[1].RecallServiceStub(self.channel)

    def rest(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def service(served_run):
    workdir, _, target, _, _ = served_run
    expected = _expected(workdir, target, USER, K, set(USER["read_post_id"]))
    svc = Service(workdir, os.path.join(workdir, "service.log"), "--model_target", target)
    yield svc, expected
    svc.stop()


def _grpc_recall(stub, k=K, keep_read=False, filters=None, **user):
    pb2 = _stubs()[0]
    query = (pb2.Query(log_line=user["log_line"]) if "log_line" in user else
             pb2.Query(features=pb2.Features(values={c: ",".join(v) if isinstance(v, list) else str(v)
                                                      for c, v in user["features"].items()})))
    return stub.Recall(pb2.RecallRequest(queries=[query], k=k, keep_read=keep_read,
                                         filters=[pb2.Filter(field=f, values=v) for f, v in (filters or {}).items()]),
                       timeout=30)


def test_recall_over_grpc_and_rest_is_the_numpy_ranking(service):
    svc, (generation, version, expected, _, _) = service
    status, body = svc.rest("POST", "/v1/recall", {"features": USER, "k": K})
    assert status == 200, body
    assert body["generation"] == generation and body["model_version"] == version
    assert [h["id"] for h in body["hits"]] == [i for i, _ in expected]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [s for _, s in expected], atol=1e-4)
    assert all("topic_id" in h for h in body["hits"]), "each hit carries its stored fields"
    assert body["history_length"] == 3
    answer = _grpc_recall(svc.stub, features=USER)
    assert answer.generation == generation and answer.model_version == version
    assert [h.id for h in answer.answers[0].hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in answer.answers[0].hits], [s for _, s in expected], atol=1e-4)
    assert [h.fields["topic_id"] for h in answer.answers[0].hits] == [h["topic_id"] for h in body["hits"]]


def test_a_log_line_instances_filters_and_keep_read(service):
    from schema.spec import load_spec

    svc, (_, _, expected, rows, _) = service
    spec = load_spec()
    columns = {**{c: "" for c in spec.columns}, "act": "0", "post_id": "p999", "client_id": "u7", "client_type": "1",
               "follow_topic_id": "3,8", "read_post_id": "p1,p2,p3"}
    line = "\t".join(columns[c] for c in spec.columns)
    status, body = svc.rest("POST", "/v1/recall", {"instances": [{"log_line": line}, {"features": USER}], "k": K})
    assert status == 200, body
    assert [len(a["hits"]) for a in body["answers"]] == [K, K]
    assert [h["id"] for h in body["answers"][0]["hits"]] == [i for i, _ in expected] == \
           [h["id"] for h in body["answers"][1]["hits"]]
    topic = {r["post_id"]: r["topic_id"] for r in rows}[expected[0][0]]
    _, body = svc.rest("POST", "/v1/recall", {"features": USER, "k": 5, "filters": {"topic_id": [topic]}})
    assert body["hits"] and all(h["topic_id"] == topic for h in body["hits"])
    _, kept = svc.rest("POST", "/v1/recall", {"features": USER, "k": 200, "keep_read": True})
    _, left_out = svc.rest("POST", "/v1/recall", {"features": USER, "k": 200})
    assert not {h["id"] for h in left_out["hits"]} & set(USER["read_post_id"])
    assert [h["id"] for h in kept["hits"] if h["id"] not in USER["read_post_id"]][:100] == \
           [h["id"] for h in left_out["hits"]][:100]


def test_added_posts_are_recalled_at_once_and_a_bad_post_adds_nothing(served_run, service):
    """A new post's score is worked out by hand: its item vector from the model server's item
    signature (its content, its topic, an id the model never saw), cosine with the user's vector."""
    from common import signature_names
    from schema.spec import load_spec
    from serving.client import ServingClient
    from serving.examples import ExampleBuilder
    from tests.made_up import NoContent

    svc, (_, version, expected, rows, user) = service
    best = next(r for r in rows if r["post_id"] == expected[0][0])
    _, before = svc.rest("GET", "/v1/status")
    status, body = svc.rest("POST", "/v1/items", {"posts": [{"post_id": "fresh-1", "values": [0.0] * 3},
                                                            {"post_id": "fresh-2", "values": [1.0, float("1e39")]}]})
    assert status == 400 and "post 0" in body["error"] and "post 1" in body["error"] and "none added" in body["error"]
    _, after = svc.rest("GET", "/v1/status")
    assert after["item_count"] == before["item_count"] and after["item_store"] == before["item_store"]

    pb2, _ = _stubs()
    content = _store_vector(svc, best["post_id"], before["item_store"]["dim"])
    requests = iter([pb2.AddItemsRequest(posts=[pb2.Post(post_id="fresh-1", values=content,
                                                         fields={"topic_id": best["topic_id"]})])])
    added = svc.stub.AddItems(requests, timeout=60)
    assert added.added == 1 and added.generation == before["generation"]
    example = ExampleBuilder(load_spec(), NoContent()).from_features(
        {"post_id": "fresh-1", "topic_id": best["topic_id"]}, item_vector=np.asarray(content, np.float32))
    with ServingClient(served_run[2], "dssm") as client:
        item = client.embeddings(signature_names.ITEM, [example], version)[0]
    by_hand = float(item @ user / np.linalg.norm(item) / np.linalg.norm(user))
    answer = _grpc_recall(svc.stub, k=2000, features=USER)
    hits = [(h.id, h.score) for h in answer.answers[0].hits]
    assert len(hits) == before["item_count"] + 1 - len(USER["read_post_id"])
    score = dict(hits)["fresh-1"]
    assert abs(score - by_hand) < 1e-4
    assert [i for i, _ in hits].index("fresh-1") == sum(s > score for _, s in hits)
    _, status_body = svc.rest("GET", "/v1/status")
    assert status_body["item_count"] == before["item_count"] + 1


def _store_vector(svc, post_id, dim):
    """The post's content vector, from the bundled sample's vector file (the store was seeded from it)."""
    with open(os.path.join(REPO, "data", "sample", "item_vectors.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row["post_id"] == post_id:
                assert len(row["values"]) == dim
                return row["values"]
    raise AssertionError(f"{post_id} not in the sample's vectors")


HOSTILE_REST = [
    ({"features": USER}, 400, '"k" is missing'),
    ({"features": USER, "k": 0}, 400, "k must be an integer from 1"),
    ({"features": USER, "k": 10**30}, 400, "k must be an integer from 1"),
    ({"features": USER, "k": "5"}, 400, "k must be an integer"),
    ({"features": USER, "k": True}, 400, "k must be an integer"),
    ({"features": USER, "k": 5, "filters": {"colour": ["red"]}}, 400, "cannot filter on ['colour']"),
    ({"features": USER, "k": 5, "filters": {f"f{i}": ["1"] for i in range(9)}}, 400, "more than 8"),
    ({"features": USER, "k": 5, "filters": {"topic_id": []}}, 400, "filters.topic_id must be a non-empty list"),
    ({"features": USER, "k": 5, "filters": {"topic_id": ["a\x00b"]}}, 400, "NUL"),
    ({"features": USER, "k": 5, "keep_read": "yes"}, 400, "keep_read must be true or false"),
    ({"features": USER, "k": 5, "new_posts": 6}, 400, "new_posts must be an integer from 0 to k (5), got 6"),
    ({"features": USER, "k": 5, "new_posts": True}, 400, "new_posts must be an integer from 0 to k"),
    ({"features": USER, "k": 5, "new_posts": -1}, 400, "new_posts must be an integer from 0 to k"),
    ({"features": USER, "k": 5, "limit": 3}, 400, "unknown key(s) ['limit']"),
    ({"features": [1, 2], "k": 5}, 400, "queries[0].features must be an object"),
    ({"features": {"shoe_size": 3}, "k": 5}, 400, "unknown feature(s) ['shoe_size']"),
    ({"features": {**USER, "read_post_id": "p," * 40000}, "k": 5}, 400, "queries[0].features.read_post_id is longer"),
    ({"features": {**USER, "client_type": "12345678901234567890123"}, "k": 5}, 400, "client_type"),
    ({"log_line": "only\tthree\tcolumns", "k": 5}, 400, "queries[0]"),
    ({"instances": [{"features": USER}] * 257, "k": 5}, 400, "more than 256"),
    ({"instances": [{"features": USER, "log_line": "x"}], "k": 5}, 400, "queries[0] must be"),
    ({"features": USER, "log_line": "x", "k": 5}, 400, "exactly one of"),
    ([1, 2, 3], 400, "the body must be a JSON object"),
]


@pytest.mark.parametrize("body,code,message", HOSTILE_REST, ids=[m for _, _, m in HOSTILE_REST])
def test_every_malformed_rest_request_is_a_4xx_naming_the_field(service, body, code, message):
    svc, _ = service
    status, answer = svc.rest("POST", "/v1/recall", body)
    assert (status, message in answer["error"]) == (code, True), answer


def test_malformed_bodies_paths_and_sizes_are_4xx_never_500(service):
    svc, _ = service
    assert svc.rest("POST", "/v1/recall", raw=b'{"k": 5, "features": ')[0] == 400
    assert svc.rest("POST", "/v1/recall", raw=b'{"k": NaN, "features": {}}')[0] == 400
    assert svc.rest("POST", "/v1/recall", raw=b"\xff\xfe")[0] == 400
    status, body = svc.rest("POST", "/v1/recall", raw=b"[" * 100 + b"]" * 100)
    assert status == 400 and body["error"].startswith("JSON Parse error: nesting")
    status, body = svc.rest("POST", "/v1/items", raw=b"[" + b"[]," * 1_100_000 + b"[]]")
    assert status == 400 and "JSON values" in body["error"]
    with socket.create_connection(("127.0.0.1", svc.rest_port), timeout=30) as s:  # refused from the headers
        s.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (17 << 20))
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    assert svc.rest("GET", "/v1/nothing")[0] == 404
    assert svc.rest("GET", "/v1/recall")[0] == 405
    assert svc.rest("POST", "/v1/items", {"posts": []})[0] == 400
    status, body = svc.rest("POST", "/v1/items", {"posts": [{"post_id": "x"}] * 10_001})
    assert status == 400 and "more than 10,000" in body["error"]


def test_malformed_grpc_requests_are_invalid_argument_naming_the_field(service):
    svc, _ = service
    pb2, _ = _stubs()
    cases = [
        (pb2.RecallRequest(k=5), "give at least one user"),
        (pb2.RecallRequest(queries=[pb2.Query()], k=5), "queries[0] must be"),
        (pb2.RecallRequest(queries=[pb2.Query(log_line="a\tb")], k=0), "k must be an integer from 1"),
        (pb2.RecallRequest(queries=[pb2.Query(log_line="a\tb")] * 257, k=5), "more than 256"),
        (pb2.RecallRequest(queries=[pb2.Query(features=pb2.Features(values={"nope": "1"}))], k=5), "unknown feature"),
        (pb2.RecallRequest(queries=[pb2.Query(log_line="a\tb")], k=5, new_posts=6),
         "new_posts must be an integer from 0 to k (5), got 6"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            svc.stub.Recall(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        svc.stub.Recall(pb2.RecallRequest(queries=[pb2.Query(log_line="x" * (17 << 20))], k=5), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        svc.stub.AddItems(iter([pb2.AddItemsRequest(posts=[pb2.Post(post_id="n1", values=[float("nan")] * 4)])]),
                          timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "post 0" in e.value.details()


def test_a_half_closed_rest_connection_gets_its_answer(service):
    svc, _ = service
    body = json.dumps({"features": USER, "k": 3}).encode()
    with socket.create_connection(("127.0.0.1", svc.rest_port), timeout=30) as s:
        s.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b'"hits"' in answer


def test_the_service_with_a_remote_tower_never_loads_tensorflow(service):
    svc, _ = service
    with open(f"/proc/{svc.proc.pid}/maps") as f:
        maps = f.read()
    assert "libtensorflow" not in maps and "_pywrap_tensorflow" not in maps


def test_a_model_server_outage_is_unavailable_with_the_cause_and_the_service_recovers(served_run, service):
    from serving.server import spawn

    workdir, model, target, port, shared = served_run
    svc, _ = service
    model["proc"].kill()
    model["proc"].wait()
    status, body = svc.rest("POST", "/v1/recall", {"features": USER, "k": 3})
    assert status == 503 and "the user tower (TF Serving" in body["error"] and "UNAVAILABLE" in body["error"], body
    with pytest.raises(grpc.RpcError) as e:
        _grpc_recall(svc.stub, features=USER)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    again, _ = spawn(["--port", str(port), "--model_name", "dssm", "--model_base_path",
                      os.path.join(workdir, "serving", "dssm")], os.path.join(workdir, "model-server-2.log"),
                     timeout=120)
    model["proc"] = again  # the fixture's teardown stops it
    status, body = svc.rest("POST", "/v1/recall", {"features": USER, "k": 3})
    assert status == 200 and len(body["hits"]) == 3


def test_a_milvus_lite_file_missing_or_held_is_one_error_line(served_run, tmp_path):
    workdir, _, target, _, _ = served_run
    missing = subprocess.run([sys.executable, "-m", "retrieval.service", "--workdir", str(tmp_path),
                              "--model_target", target, "--port", "0"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0, missing.stderr
    assert missing.stderr.startswith("error: ")


# ---- load: valid and hostile requests at once ----

LOAD_KINDS = {  # kind -> the status it must get (REST code, or gRPC code name)
    "rest_valid": 200, "rest_deep": 400, "rest_nan": 400, "rest_k0": 400, "rest_unknown_feature": 400,
    "rest_values_bomb": 400, "rest_bad_utf8": 400, "rest_too_large": 413, "rest_no_path": 404,
    "grpc_valid": "OK", "grpc_k0": "INVALID_ARGUMENT", "grpc_many_users": "INVALID_ARGUMENT",
    "grpc_oversized": "RESOURCE_EXHAUSTED", "grpc_garbage": "INTERNAL",
}
LOAD_MIX = ["rest_valid"] * 6 + ["grpc_valid"] * 6 + [k for k in LOAD_KINDS if not k.endswith("_valid")]


def _load_request(kind, rest_port, stub, channel, pb2):
    """(status, hit ids or None) of one request of the kind."""
    import http.client

    bodies = {
        "rest_valid": json.dumps({"features": USER, "k": K}).encode(),
        "rest_deep": b"[" * 40 + b"]" * 40,
        "rest_nan": b'{"features": {}, "k": NaN}',
        "rest_k0": json.dumps({"features": USER, "k": 0}).encode(),
        "rest_unknown_feature": json.dumps({"features": {"x": 1}, "k": 3}).encode(),
        "rest_values_bomb": b"[" + b"[]," * 1_050_000 + b"[]]",
        "rest_bad_utf8": b'{"log_line": "\xff\xfe", "k": 3}',
    }
    if kind.startswith("rest_"):
        conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
        try:
            if kind == "rest_too_large":
                conn.putrequest("POST", "/v1/recall")
                conn.putheader("Content-Length", str(32 << 20))
                conn.endheaders()
            else:
                path = "/v1/nowhere" if kind == "rest_no_path" else ("/v1/items" if kind == "rest_values_bomb"
                                                                     else "/v1/recall")
                conn.request("POST", path, bodies.get(kind, b"{}"), {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read())
            return response.status, [h["id"] for h in body["hits"]] if response.status == 200 else None
        finally:
            conn.close()
    requests = {
        "grpc_valid": lambda: _grpc_recall(stub, features=USER),
        "grpc_k0": lambda: _grpc_recall(stub, k=0, features=USER),
        "grpc_many_users": lambda: stub.Recall(pb2.RecallRequest(queries=[pb2.Query(log_line="x")] * 300, k=3),
                                               timeout=30),
        "grpc_oversized": lambda: stub.Recall(pb2.RecallRequest(queries=[pb2.Query(log_line="y" * (17 << 20))],
                                                                k=3), timeout=30),
        "grpc_garbage": lambda: channel.unary_unary("/dssm.recall.v1.RecallService/Recall")(
            b"\x0a\xff\xff\xff\xff\x0f not a protobuf", timeout=30),
    }
    try:
        answer = requests[kind]()
    except grpc.RpcError as e:
        return e.code().name, None
    return "OK", [h.id for h in answer.answers[0].hits]


def test_under_load_with_hostile_requests_every_answer_is_right_and_memory_stays_bounded(service):
    """8 clients (threads, each its own connection and channel) cycle through valid and hostile
    requests over REST and gRPC: every valid answer is the numpy ranking (a post added by another
    test may enter it: fresh ids are left out before comparing), every hostile one its status; the
    service's RSS is read before and after."""
    from tests.load_driver import rss_bytes

    svc, (_, _, expected, _, _) = service
    pb2, pb2_grpc = _stubs()
    want = [i for i, _ in expected]
    rss = [rss_bytes(svc.proc.pid)]
    results, lock = [], threading.Lock()

    def client(n):
        channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}",
                                        options=[("grpc.max_send_message_length", 64 << 20)])
        stub = pb2_grpc.RecallServiceStub(channel)
        for i in range(len(LOAD_MIX) * 8):
            kind = LOAD_MIX[(i + n * 3) % len(LOAD_MIX)]
            try:
                got = _load_request(kind, svc.rest_port, stub, channel, pb2)
            except Exception as e:  # noqa: BLE001 - a dropped connection is a failure like any other
                got = (repr(e)[:200], None)
            with lock:
                results.append((kind, *got))
        channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss.append(rss_bytes(svc.proc.pid))
    wrong_status = [(k, s) for k, s, _ in results if s != LOAD_KINDS[k]]
    wrong_hits = [(k, ids) for k, s, ids in results if ids is not None
                  and [i for i in ids if not i.startswith("fresh-")][:5] != want[:5]]
    assert not wrong_status, f"{len(wrong_status)} of {len(results)}: {wrong_status[:5]}"
    assert not wrong_hits, f"{len(wrong_hits)} wrong answers: {wrong_hits[:3]}"
    assert sum(1 for k, _, _ in results if k.endswith("_valid")) >= 8 * 8 * 12
    growth = (rss[1] - rss[0]) / 2**20
    assert growth < 400, f"the service's RSS grew by {growth:.0f} MiB under {len(results)} requests"


# ---- consistency: the alias moves between two model versions while clients recall ----

def test_no_answer_mixes_model_versions_while_generations_move(tmp_path):
    """The made-up towers (tests/made_up.py): two versions that agree only with themselves, generations
    filled by each in turn while gRPC and REST clients recall through the service: a user who follows
    t1 gets p1 and p2 from either version; a mixed answer would rank another topic's items first."""
    import tensorflow as tf

    from retrieval.backends import open_index
    from retrieval.catalog import ModelVocabulary
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.milvus import Batch, write_generation
    from retrieval.recall import ServingTowers
    from retrieval.service.__main__ import RecallServer
    from retrieval.service.core import RecallCore
    from schema.spec import load_spec
    from serving.client import ServingClient
    from serving.model_config import config_text, parse_config_text
    from serving.server import ModelServer
    from tests import made_up

    spec, catalog = load_spec(), list(made_up.WEIGHTS)
    base = tmp_path / "serving" / "m"
    for version, rotate in ((1, 0), (2, 1)):
        module = made_up.MadeUpTowers(rotate=rotate)
        tf.saved_model.save(module, str(base / str(version)), signatures=module.signatures("all"))
    config = IndexConfig(uri=str(tmp_path / "milvus.db"), alias="items", keep_generations=2)

    def index(version):
        vectors = np.stack([made_up.item_vector(p, rotate=version - 1) for p in catalog])
        batch = Batch(catalog, {"topic_id": [made_up.ITEM_TOPIC[p] for p in catalog]}, vectors)
        return write_generation(config, [batch], "post_id", ["topic_id"], made_up.DIM, model_version=version)

    index(1)
    item_index = open_index(config, refresh_seconds=0)
    store = ItemStore(config, "post_id", client=item_index.client)
    store.ensure(made_up.DIM, ["topic_id"])
    served = parse_config_text(config_text({"m": str(base)}, num_versions=2))
    answers, failures, stop = [], [], threading.Event()
    pb2, pb2_grpc = _stubs()
    user = {"client_id": "u1", "follow_topic_id": ["t1"]}
    with ModelServer(served, port=0, poll_seconds=0) as model, ServingClient(model.target, "m") as client:
        core = RecallCore(item_index, store, ServingTowers(client), ModelVocabulary(str(base), spec), spec,
                          check_model=False)
        server = RecallServer(core).start()

        def over_grpc():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb2_grpc.RecallServiceStub(channel)
                while not stop.is_set():
                    try:
                        a = _grpc_recall(stub, k=2, keep_read=True, features=user)
                        answers.append((a.model_version, {h.id for h in a.answers[0].hits}))
                    except Exception as e:  # noqa: BLE001 - every failure is counted
                        failures.append(repr(e))

        def over_rest():
            body = json.dumps({"features": user, "k": 2, "keep_read": True}).encode()
            while not stop.is_set():
                try:
                    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/recall", data=body)
                    with urllib.request.urlopen(request, timeout=30) as r:
                        a = json.loads(r.read())
                    answers.append((a["model_version"], {h["id"] for h in a["hits"]}))
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

        threads = [threading.Thread(target=f) for f in (over_grpc, over_grpc, over_rest)]
        for t in threads:
            t.start()
        for version in (2, 1, 2, 1, 2):
            index(version)
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    item_index.close()
    assert not failures, failures[:3]
    assert {v for v, _ in answers} == {1, 2}, "both versions were searched"
    mixed = [a for a in answers if a[1] != {"p1", "p2"}]
    assert not mixed, f"{len(mixed)} mixed answers of {len(answers)}: {mixed[:3]}"
