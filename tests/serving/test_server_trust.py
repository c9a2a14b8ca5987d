"""The model server as a trust boundary (issue [server-trust]), over real sockets: reloads cannot load
a model from outside the operator's roots, a broken or half-copied version never takes a model
offline, every request's cost is bounded before it is built (empty list entries included), answers
are bounded, and malformed input is a 400 / INVALID_ARGUMENT. Each test names the item of the issue
it covers; expected answers are computed here (weights summed with numpy, the tiny model's 0.5 x + 2).
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.model_config import ModelConfig, parse_config_text
from serving.request_cost import RequestLimits
from serving.server import ModelServer
from tests.conftest import REPO
from tests.serving_models import save_lists_version, save_version

MAX_ENTRIES = 5000
MAX_MODEL_BYTES = 400_000  # the lists model declares 1,000 floats a row: 100 rows
MAX_RESPONSE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    save_version(str(root / "models" / "tiny"), 1)  # y = 0.5 x + 2
    save_lists_version(str(root / "models" / "lists"), 1)
    save_version(str(root / "outside" / "evil"), 1)  # a real model outside the roots
    return root


def _config(**bases) -> str:
    entries = "".join(f' config {{ name: "{n}" base_path: "{p}" }}' for n, p in bases.items())
    return "model_config_list {" + entries + " }"


@pytest.fixture(scope="module")
def server(models):
    configs = parse_config_text(_config(tiny=models / "models" / "tiny", lists=models / "models" / "lists"))
    with ModelServer(configs, port=0, rest_api_port=0, poll_seconds=0, max_request_bytes=20 * 1024 * 1024,
                     limits=RequestLimits(MAX_ENTRIES, MAX_MODEL_BYTES, MAX_RESPONSE_BYTES),
                     roots=[str(models / "models")]) as s:
        yield s


def _reload(server, config_text: str):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(_server_config(config_text))
    with grpc.insecure_channel(server.target) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def _server_config(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def _tiny_answer(server) -> list:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["x"].CopyFrom(_tensor(types_pb2.DT_FLOAT, [2], float_val=[2.0, 4.0]))
    with grpc.insecure_channel(server.target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return list(response.outputs["y"].float_val)


def _tensor(dtype, dims, **values) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


def _rest(server, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def _example(ids: list[bytes], weights: list[float]) -> bytes:
    ex = example_pb2.Example()
    ex.features.feature["ids"].bytes_list.value.extend(ids)
    ex.features.feature["w"].float_list.value.extend(weights)
    return ex.SerializeToString()


def _grpc_lists(server, signature: str = "", output_filter=(), **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lists"
    request.model_spec.signature_name = signature
    request.output_filter.extend(output_filter)
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    with grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


# ---- 1. reload is not a code-loading door ----

def test_1_a_reload_naming_a_path_outside_the_roots_is_refused_with_nothing_read(server, models):
    from tests.fs_watch import OpenWatch

    outside = [root for root, _, _ in os.walk(models / "outside")]
    watch = OpenWatch(outside)
    error = _rpc_error(lambda: _reload(server, _config(tiny=models / "models" / "tiny",
                                                       evil=models / "outside" / "evil")))
    opened = watch.events()
    watch.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not under the model base path roots" in error.details() and "--model_base_path_roots" in error.details()
    assert opened == []
    assert server.manager.model_names() == ["lists", "tiny"]  # nothing changed
    assert _tiny_answer(server) == [3.0, 4.0]


def test_1_a_link_inside_a_root_that_points_outside_is_refused(server, models):
    link = models / "models" / "link"
    os.symlink(models / "outside" / "evil", link)
    try:
        error = _rpc_error(lambda: _reload(server, _config(tiny=models / "models" / "tiny", evil=link)))
    finally:
        os.unlink(link)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not under" in error.details()


def test_1_reloads_switched_off_are_permission_denied(models, tmp_path):
    shutil.copytree(models / "models" / "tiny", tmp_path / "tiny")
    with ModelServer(parse_config_text(_config(tiny=tmp_path / "tiny")), port=0, poll_seconds=0,
                     allow_reload=False) as s:
        error = _rpc_error(lambda: _reload(s, _config(tiny=tmp_path / "tiny")))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "--allow_reload=false" in error.details()
        assert _tiny_answer(s) == [3.0, 4.0]


def test_1_a_config_file_naming_a_path_outside_its_directory_stops_the_server(models, tmp_path):
    config = tmp_path / "conf" / "models.config"
    config.parent.mkdir()
    config.write_text(_config(evil=models / "outside" / "evil"))
    run = subprocess.run([sys.executable, "-m", "serving.server", "--port", "0", "--model_config_file", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model evil: base_path") and "not under the model base path roots" in last
    assert str(config.parent) in last


# ---- 2. an empty config ----

def test_2_an_empty_reload_is_refused_and_every_model_keeps_serving(server):
    error = _rpc_error(lambda: _reload(server, "model_config_list {}"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--allow_empty_config" in error.details()
    assert _tiny_answer(server) == [3.0, 4.0]


def test_2_an_empty_reload_unloads_everything_when_allowed(models, tmp_path):
    shutil.copytree(models / "models" / "tiny", tmp_path / "tiny")
    with ModelServer(parse_config_text(_config(tiny=tmp_path / "tiny")), port=0, poll_seconds=0,
                     allow_empty_config=True) as s:
        _reload(s, "model_config_list {}")
        assert _rpc_error(lambda: _tiny_answer(s)).code() == grpc.StatusCode.NOT_FOUND


# ---- 3. versions: complete only, a failed load never unloads a serving one, retried when it changes ----

def _manager(base, num_versions: int = 1):
    from serving.servables import ServableManager

    policy = ModelConfig("m", str(base), num_versions=num_versions)
    # a failed version is tried at the first poll that sees its files changed: no settle time and no
    # backoff here (tests/serving/test_server_limits.py covers those with the server's defaults)
    return ServableManager([policy], poll_seconds=0, settle_seconds=0, retry_seconds=0)


def _served(manager) -> int:
    return manager.resolve("m").version


def test_3_a_half_copied_version_is_not_loaded_and_the_old_one_serves(tmp_path):
    good = save_version(str(tmp_path / "src"), 2)
    save_version(str(tmp_path / "m"), 1)
    manager = _manager(tmp_path / "m")
    manager.start()
    os.makedirs(tmp_path / "m" / "2")
    shutil.copy(os.path.join(good, "saved_model.pb"), tmp_path / "m" / "2")  # what a copy writes first
    manager.poll_once()
    assert _served(manager) == 1
    assert [v for v, _ in manager.version_states("m")] == [1]
    shutil.copytree(os.path.join(good, "variables"), tmp_path / "m" / "2" / "variables")  # the copy completes
    manager.poll_once()
    assert _served(manager) == 2


def test_3_a_broken_version_stays_failed_while_the_old_one_serves_and_is_retried_once_fixed(tmp_path):
    good = save_version(str(tmp_path / "src"), 2)
    save_version(str(tmp_path / "m"), 1)
    manager = _manager(tmp_path / "m")
    manager.start()
    shutil.copytree(good, tmp_path / "m" / "2")
    data = next((tmp_path / "m" / "2" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:3])  # truncated
    manager.poll_once()
    assert _served(manager) == 1
    states = dict(manager.version_states("m"))
    assert states[1].state == "AVAILABLE"
    assert states[2].state == "END" and states[2].error_code == grpc.StatusCode.UNKNOWN and states[2].error_message
    manager.poll_once()  # unchanged files: not tried again, still serving 1
    assert _served(manager) == 1
    shutil.copy(next((tmp_path / "src" / "2" / "variables").glob("variables.data-*")), data)  # fixed
    manager.poll_once()
    assert _served(manager) == 2
    assert dict(manager.version_states("m"))[2].state == "AVAILABLE"


def test_3_two_broken_versions_under_latest_two_unload_neither_good_one(tmp_path):
    for v in (1, 2):
        save_version(str(tmp_path / "m"), v)
    manager = _manager(tmp_path / "m", num_versions=2)
    manager.start()
    for v in (3, 4):
        shutil.copytree(tmp_path / "m" / "2", tmp_path / "m" / str(v))
        (tmp_path / "m" / str(v) / "saved_model.pb").write_bytes(b"broken")
    manager.poll_once()
    states = dict(manager.version_states("m"))
    assert {v: s.state for v, s in states.items()} == {1: "AVAILABLE", 2: "AVAILABLE", 3: "END", 4: "END"}
    assert manager.resolve("m", version=1).version == 1 and _served(manager) == 2


# ---- 4. cost bounded before allocation ----

def test_4_empty_list_entries_count_over_rest(server):
    n = 2600  # 2,600 rows of empty lists: 7,803 entries, 0 values
    body = json.dumps({"signature_name": "raw", "inputs": {"ids": [[]] * n, "w": [[]] * n, "kind": [0] * n}})
    status, payload = _rest(server, "/v1/models/lists:predict", body.encode())
    assert status == 400 and "--max_request_elements" in payload["error"], payload


def test_4_empty_dimensions_count_over_grpc(server):
    n = 3000
    error = _rpc_error(lambda: _grpc_lists(server, "raw", ids=_tensor(types_pb2.DT_STRING, [n, 0]),
                                           w=_tensor(types_pb2.DT_FLOAT, [n, 0]),
                                           kind=_tensor(types_pb2.DT_INT64, [n], int64_val=[0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_request_elements" in error.details()


def test_4_empty_entries_inside_one_tf_example_count(server):
    example = _example([b""] * 10_000, [])
    error = _rpc_error(lambda: _grpc_lists(server, examples=_tensor(types_pb2.DT_STRING, [1], string_val=[example])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_request_elements" in error.details()


def test_4_rows_beyond_the_models_padded_memory_budget_are_refused(server):
    rows = 200  # x 1,000 floats x 4 bytes = 800,000 > 400,000
    examples = [_example([b"a"], [1.0])] * rows
    error = _rpc_error(lambda: _grpc_lists(server, examples=_tensor(types_pb2.DT_STRING, [rows], string_val=examples)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_request_model_bytes" in error.details()
    body = json.dumps({"signature_name": "raw", "inputs": {"ids": [["a"]] * rows, "w": [[1.0]] * rows,
                                                           "kind": [0] * rows}})
    status, payload = _rest(server, "/v1/models/lists:predict", body.encode())
    assert status == 400 and "800000 bytes of padded model input" in payload["error"], payload


def test_4_within_the_limits_the_answers_are_right(server):
    rng = np.random.default_rng(4)
    weights = [rng.uniform(0, 2, rng.integers(0, 6)).astype(np.float32) for _ in range(50)]
    examples = [_example([b"x"] * len(w), w.tolist()) for w in weights]
    response = _grpc_lists(server, examples=_tensor(types_pb2.DT_STRING, [50], string_val=examples))
    np.testing.assert_allclose(response.outputs["total"].float_val, [w.sum() for w in weights], rtol=1e-6)


# ---- 5. answers bounded ----

def test_5_an_answer_over_the_limit_is_413_and_resource_exhausted(server):
    rows = 80  # "wide" is [80, 256] floats: 81,920 bytes as a proto, more as JSON; the limit is 65,536
    inputs = {"ids": [["a"]] * rows, "w": [[1.0]] * rows, "kind": [0] * rows}
    status, payload = _rest(server, "/v1/models/lists:predict", json.dumps({"signature_name": "raw",
                                                                           "inputs": inputs}).encode())
    assert status == 413 and "--max_response_bytes" in payload["error"], payload
    tensors = dict(ids=_tensor(types_pb2.DT_STRING, [rows, 1], string_val=[b"a"]),
                   w=_tensor(types_pb2.DT_FLOAT, [rows, 1], float_val=[1.0]),
                   kind=_tensor(types_pb2.DT_INT64, [rows], int64_val=[0]))
    error = _rpc_error(lambda: _grpc_lists(server, "raw", **tensors))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_response_bytes" in error.details()
    small = _grpc_lists(server, "raw", output_filter=["total"], **tensors)  # the same rows, a small answer
    assert list(small.outputs["total"].float_val) == [1.0] * rows


# ---- 6. no superlinear scan; the model is looked up before the body is decoded ----

def test_6_a_long_string_to_a_missing_model_is_a_quick_404(server):
    body = b'"' + b"a" * (16 * 1024 * 1024) + b'"'
    started = time.monotonic()
    status, payload = _rest(server, "/v1/models/no_such_model:predict", body)
    assert status == 404 and "no_such_model" in payload["error"]
    deep = b"[" * 100_000 + b"]" * 100_000  # would be a nesting 400 if it were decoded first
    assert _rest(server, "/v1/models/no_such_model:predict", deep)[0] == 404
    assert time.monotonic() - started < 5  # 16 s for the first alone before


def test_6_the_scan_before_decoding_is_linear_in_a_long_string():
    from serving.json_scan import json_scan

    body = b'{"inputs": ["' + b"a\\\"" * (5 * 1024 * 1024) + b'"]}'  # 15 MB of escaped quotes in one string
    started = time.monotonic()
    assert json_scan(body) == (2, 2)
    assert time.monotonic() - started < 5


def _scan_by_hand(text: str) -> tuple[int, int]:
    """Depth and [ { , outside strings, one character at a time."""
    depth = deepest = values = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth, values = depth + 1, values + 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
        elif c == ",":
            values += 1
    return deepest, values


def test_6_the_scan_agrees_with_a_scan_by_hand_on_both_paths_and_across_chunks():
    import random

    from serving.json_scan import json_scan

    rng = random.Random(6)
    leaves = ['a\\"b', "\\", "x]", "[{,", 1, 2.5, None, '\\\\\\"', "\ud800"]

    def value(depth):
        r = rng.random()
        if depth > 4 or r < 0.3:
            return rng.choice(leaves)
        if r < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "\\", '"']): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(1500):
        text = json.dumps(value(0))
        expected = _scan_by_hand(text)
        assert json_scan(text.encode()) == expected, text  # the small-body path
        for chunk in (1, 2, 3, 7):  # the numpy path, with escapes and strings cut at chunk edges
            assert json_scan(text.encode(), chunk=chunk, small=0) == expected, (text, chunk)


# ---- 7. a half-closed connection is answered ----

@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_7_a_client_that_shuts_down_its_sending_side_gets_its_answer(server, framing):
    body = json.dumps({"inputs": [2.0, 6.0]}).encode()
    head = (f"Content-Length: {len(body)}\r\n\r\n".encode() if framing == "content-length"
            else b"Transfer-Encoding: chunked\r\n\r\n")
    if framing == "chunked":
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
            s.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n" + head + body)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"outputs": [3.0, 5.0]}'), reply[:300]


# ---- 9. a reload naming many models ----

def test_9_a_reload_naming_more_models_than_the_limit_is_refused_at_once(models, tmp_path):
    shutil.copytree(models / "models" / "tiny", tmp_path / "tiny")
    with ModelServer(parse_config_text(_config(tiny=tmp_path / "tiny")), port=0, poll_seconds=0,
                     roots=[str(tmp_path)], max_models=4) as s:
        many = {f"m{i}": tmp_path / "tiny" for i in range(40)}
        started = time.monotonic()
        error = _rpc_error(lambda: _reload(s, _config(**many)))
        assert time.monotonic() - started < 5
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max_models 4" in error.details()
        assert s.manager.model_names() == ["tiny"]


# ---- 10. the logs' number grammar ----

@pytest.mark.parametrize("w,message", [
    ("NaN", "NaN is not JSON"), ("Infinity", "Infinity is not JSON"), ("-Infinity", "-Infinity is not JSON"),
    ("1e400", "w: inf is not a finite float32"), ("3.4e39", "w: 3.4e+39 is not a finite float32"),
    ("-1", "w: -1.0 is below its minimum 0"),
])
def test_10_rest_weights_follow_the_number_grammar(server, w, message):
    body = '{"signature_name": "raw", "inputs": {"ids": [["a"]], "w": [[W]], "kind": [0]}}'.replace("W", w)
    status, payload = _rest(server, "/v1/models/lists:predict", body.encode())
    assert status == 400 and message in payload["error"], payload


@pytest.mark.parametrize("kind", ["1.5", "true", '"1"'])
def test_10_rest_integers_are_integers(server, kind):
    body = '{"signature_name": "raw", "inputs": {"ids": [["a"]], "w": [[1.0]], "kind": [K]}}'.replace("K", kind)
    status, payload = _rest(server, "/v1/models/lists:predict", body.encode())
    assert status == 400 and "input kind" in payload["error"], payload


@pytest.mark.parametrize("value,message,in_graph", [
    (float("nan"), "w: nan is not a finite", "w: a weight is not a finite number"),
    (float("inf"), "w: inf is not a finite", "w: a weight is not a finite number"),
    (-2.0, "w: -2.0 is below", "w: a weight is below 0"),
])
def test_10_grpc_values_follow_the_number_grammar(server, value, message, in_graph):
    error = _rpc_error(lambda: _grpc_lists(server, "raw", ids=_tensor(types_pb2.DT_STRING, [1, 1], string_val=[b"a"]),
                                           w=_tensor(types_pb2.DT_FLOAT, [1, 1], float_val=[value]),
                                           kind=_tensor(types_pb2.DT_INT64, [1], int64_val=[0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    # inside a serialized tf.Example the model checks its values (the Trainer's do, in the graph):
    # the server passes its refusal on as INVALID_ARGUMENT, and stays up
    example = _example([b"a", b"b"], [1.0, value])
    error = _rpc_error(lambda: _grpc_lists(server, examples=_tensor(types_pb2.DT_STRING, [1], string_val=[example])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and in_graph in error.details()
    assert _tiny_answer(server) == [3.0, 4.0]


# ---- 11. status codes ----

@pytest.mark.parametrize("body,message", [
    (b'{"signature_name": ["raw"], "inputs": [1.0]}', "'signature_name' must be a string"),
    (b'{"signature_name": {"a": 1}, "inputs": [1.0]}', "'signature_name' must be a string"),
    (b'{"signature_name": "echo", "inputs": ["\\ud800"]}', "lone surrogate"),
])
def test_11_malformed_fields_are_400_not_500(server, body, message):
    status, payload = _rest(server, "/v1/models/tiny:predict", body)
    assert status == 400 and message in payload["error"], payload


def _raw(server, data: bytes, shutdown: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as s:
        s.sendall(data)
        s.settimeout(3)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
                if reply.endswith(b"}"):
                    break
        except TimeoutError:
            pass
    return reply


def test_11_chunk_extensions_and_trailers_are_accepted(server):
    body = json.dumps({"inputs": [2.0]}).encode()
    reply = _raw(server, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + f"{len(body):x};name=value;flag\r\n".encode() + body + b"\r\n"
                 + b"0;last=1\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"outputs": [3.0]}'), reply


def test_11_a_repeated_huge_content_length_is_413_from_the_headers(server):
    started = time.monotonic()
    reply = _raw(server, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 99999999999, 99999999999\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"99999999999 bytes exceeds" in reply, reply
    assert time.monotonic() - started < 2.5
    reply = _raw(server, b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n"
                 b"Content-Length: 18\r\n\r\n" + json.dumps({"inputs": [2.0]}).encode())
    assert reply.startswith(b"HTTP/1.1 400"), reply


# ---- 8. buffers of connections that die are given back ----

def test_8_uploads_that_never_finish_give_their_memory_back_when_they_time_out(models, tmp_path):
    """Issue item 8: uploads of 15 MB that never sent their last MB kept their memory after the
    server closed them (measured before the fix: 521 -> 813 -> 799 MiB after the second round)."""
    from serving.server import spawn
    from tests.load_driver import rss_bytes

    timeout_s = 8.0  # longer than sending the 20 uploads takes
    proc, _ = spawn(["--model_name", "tiny", "--model_base_path", str(models / "models" / "tiny"),
                     "--rest_api_port", str(_free_port()), "--rest_api_timeout_in_ms", str(int(timeout_s * 1000))],
                    str(tmp_path / "server.log"), timeout=120)
    rounds = []
    try:
        rest = proc.rest_port

        def valid(n):
            conn = http.client.HTTPConnection("127.0.0.1", rest, timeout=30)
            for i in range(n):
                conn.request("POST", "/v1/models/tiny:predict", body=json.dumps({"inputs": [float(i)] * 100}))
                assert json.loads(conn.getresponse().read()) == {"outputs": [0.5 * i + 2] * 100}
            conn.close()

        valid(50)
        before = rss_bytes(proc.pid)
        piece = b"1" * (1 << 20)
        for _ in range(3):
            uploads = []
            for _ in range(20):  # 14 of 15 MB sent, then nothing: the server's body timeout closes each
                s = socket.create_connection(("127.0.0.1", rest), timeout=30)
                s.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 15728640\r\n\r\n")
                for _ in range(14):
                    s.sendall(piece)
                uploads.append(s)
                valid(5)
            # The bytes may still sit in socket buffers on a loaded machine: wait (well within the body
            # timeout) until the server has read them, or give up and let the assertion below say so.
            until = time.monotonic() + 4.0
            while (held := rss_bytes(proc.pid)) - before <= 150 * 2**20 and time.monotonic() < until:
                time.sleep(0.1)
            time.sleep(timeout_s + 2)
            valid(20)
            rounds.append((held, rss_bytes(proc.pid)))
            for s in uploads:
                s.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    shown = ", ".join(f"{h / 2**20:.0f} -> {a / 2**20:.0f}" for h, a in rounds)
    assert all(held - before > 150 * 2**20 for held, _ in rounds), shown  # held while they lasted
    assert all(after - before < 64 * 2**20 for _, after in rounds), f"from {before / 2**20:.0f} MiB: {shown}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ALLOCATOR_PROBE = """
import sys
from serving.memory import keep_large_blocks_mapped
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
if sys.argv[1] == "server":
    keep_large_blocks_mapped()  # what the model server does at start
before = rss_mib()
first = bytearray(13 << 20); first[::4096] = b"1" * len(first[::4096]); del first
second = bytearray(13 << 20); second[::4096] = b"1" * len(second[::4096])
pinned = bytearray(200)  # allocated after the body: the heap's top is not free
del second
print(rss_mib() - before)
"""


def test_8_a_large_request_body_freed_twice_goes_back_to_the_system():
    """Why the buffers stayed: glibc raises its mmap threshold when a large block is freed, so the next
    body of that size comes from the heap and stays there once freed (13 MiB kept by a plain Python
    process below); the server fixes the threshold at start."""
    kept = {}
    for setting in ("default", "server"):
        run = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, setting], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True)
        kept[setting] = int(run.stdout.split()[-1])
    assert kept["default"] >= 10, kept  # the control: the allocator does keep it without the fix
    assert kept["server"] <= 2, kept
