"""The model server over real gRPC and HTTP on loopback, against TF Serving's documented behaviour.

Expected values are computed by hand from the tiny models' arithmetic (tests/serving_models.py).
"""
import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.model_config import ConfigError, parse_config_text, read_config_file, single_model
from serving.server import ModelServer
from serving.tensors import array_to_proto
from tests.serving_models import save_version


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for v in (1, 2):
        save_version(str(root / "tiny"), v)
    save_version(str(root / "other"), 7)
    return root


@pytest.fixture(scope="module")
def server(models):
    config = f"""
    model_config_list {{
      config {{ name: "tiny" base_path: "{models / 'tiny'}" model_platform: "tensorflow"
               model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: 1 }}
               version_labels {{ key: "canary" value: 5 }} }}
      config {{ name: "other" base_path: "{models / 'other'}" model_platform: "tensorflow" }}
    }}"""
    with ModelServer(parse_config_text(config), port=0, rest_api_port=0, poll_seconds=0) as s:
        yield s


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.target)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def request(name="tiny", signature="", version=None, label=None, **inputs):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(array_to_proto(np.asarray(v)))
    return req


def rpc_error(call, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(req, timeout=10)
    return info.value


# ---- Predict ----

def test_latest_version_typed_fields_and_resolved_spec(stubs):
    resp = stubs[0].Predict(request(x=np.array([1.0, 2.0, -4.0], np.float32)), timeout=10)
    y = resp.outputs["y"]
    assert list(resp.outputs) == ["y"]
    assert y.dtype == types_pb2.DT_FLOAT and not y.tensor_content
    assert [d.size for d in y.tensor_shape.dim] == [3]
    assert list(y.float_val) == [0.5 * 1 + 3, 0.5 * 2 + 3, 0.5 * -4 + 3]  # version 2: offset 3
    assert (resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name) == \
        ("tiny", 2, "serving_default")


def test_specific_version_and_label(stubs):
    resp = stubs[0].Predict(request(version=1, x=np.array([2.0], np.float32)), timeout=10)
    assert list(resp.outputs["y"].float_val) == [3.0] and resp.model_spec.version.value == 1
    resp = stubs[0].Predict(request(label="stable", x=np.array([2.0], np.float32)), timeout=10)
    assert list(resp.outputs["y"].float_val) == [3.0] and resp.model_spec.version.value == 1


def test_several_inputs_and_output_dtypes(stubs):
    resp = stubs[0].Predict(request(signature="mixed", a=np.array([0.5, 1.5], np.float32),
                                    b=np.array([3, 4], np.int64)), timeout=10)
    assert list(resp.outputs["sum"].float_val) == [3.5, 5.5]
    assert resp.outputs["doubled"].dtype == types_pb2.DT_INT64 and list(resp.outputs["doubled"].int64_val) == [6, 8]
    assert resp.outputs["tag"].dtype == types_pb2.DT_STRING and list(resp.outputs["tag"].string_val) == [b"3!", b"4!"]
    assert resp.model_spec.signature_name == "mixed"


def test_output_filter(stubs):
    req = request(signature="mixed", a=np.array([1.0], np.float32), b=np.array([1], np.int64))
    req.output_filter.append("doubled")
    assert list(stubs[0].Predict(req, timeout=10).outputs) == ["doubled"]
    req.output_filter.append("nope")
    e = rpc_error(stubs[0].Predict, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == ("output tensor alias not found in signature: nope "
                           "Outputs expected to be in the set {doubled,sum,tag}.")
    req.output_filter[:] = ["sum", "sum"]
    e = rpc_error(stubs[0].Predict, req)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: sum")


def test_tensor_content_input_is_accepted(stubs):
    req = request()
    x = np.array([4.0, 6.0], np.float32)
    req.inputs["x"].dtype = types_pb2.DT_FLOAT
    req.inputs["x"].tensor_shape.dim.add().size = 2
    req.inputs["x"].tensor_content = x.tobytes()
    assert list(stubs[0].Predict(req, timeout=10).outputs["y"].float_val) == [5.0, 6.0]


@pytest.mark.parametrize("req,code,message", [
    (predict_pb2.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    (request(name="", x=[1.0]), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (request(name="nope", x=[1.0]), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (request(version=9, x=[1.0]), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(tiny, 9)"),
    (request(label="beta", x=[1.0]), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: beta"),
    (request(label="canary", x=[1.0]), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(tiny, 5)"),
    (request(signature="nope", x=[1.0]), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (request(), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}."),
    (request(x=np.array([1.0], np.float32), z=np.array([1.0], np.float32), a=np.array([1.0], np.float32)),
     grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 3!=1 len({a,x,z}) != len({x}). Sent extra: {a,z}. "
     "Missing but required: {}."),
    (request(z=np.array([1.0], np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "input tensor alias not found in signature: z. Inputs expected to be in the set {x}."),
])
def test_predict_errors(stubs, req, code, message):
    e = rpc_error(stubs[0].Predict, req)
    assert (e.code(), e.details()) == (code, message)


def test_wrong_dtype_and_shape(stubs):
    e = rpc_error(stubs[0].Predict, request(x=np.array([b"1.0"], object)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be float but string is provided" in e.details()
    e = rpc_error(stubs[0].Predict, request(x=np.ones((2, 2), np.float32)))  # rank 2 for a [None] input
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_long_messages_are_truncated(stubs):
    req = request(**{f"extra_{'x' * 40}_{i}": np.array([1.0], np.float32) for i in range(40)})
    e = rpc_error(stubs[0].Predict, req)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details().endswith("...TRUNCATED") and len(e.details()) == 1024 + len("...TRUNCATED")


def test_oversized_request_is_refused_and_server_lives(models):
    with ModelServer(single_model("tiny", str(models / "tiny")), port=0, poll_seconds=0,
                     max_request_bytes=64 * 1024) as s, grpc.insecure_channel(s.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        e = rpc_error(stub.Predict, request(x=np.zeros(100_000, np.float32)))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list(stub.Predict(request(x=np.array([0.0], np.float32)), timeout=10).outputs["y"].float_val) == [3.0]


def test_garbage_bytes_do_not_take_the_server_down(server, stubs):
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")  # no (de)serializer
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xfe garbage \x00\x01", timeout=10)
        assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert stubs[0].Predict(request(x=np.array([0.0], np.float32)), timeout=10).model_spec.version.value == 2


# ---- GetModelMetadata / GetModelStatus ----

def test_metadata(stubs):
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "tiny"
    resp = stubs[0].GetModelMetadata(req, timeout=10)
    assert (resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name) == ("tiny", 2, "")
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    # every SignatureDef of the MetaGraph, the init op included, as TF Serving lists them
    assert set(sigs.signature_def) == {"serving_default", "mixed", "echo", "__saved_model_init_op"}
    assert sigs.signature_def["mixed"].inputs["b"].dtype == types_pb2.DT_INT64
    assert set(sigs.signature_def["mixed"].outputs) == {"sum", "doubled", "tag"}

    empty = get_model_metadata_pb2.GetModelMetadataRequest()
    empty.model_spec.name = "tiny"
    e = rpc_error(stubs[0].GetModelMetadata, empty)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                       "GetModelMetadataRequest must specify at least one metadata_field")
    empty.metadata_field.append("graph")
    e = rpc_error(stubs[0].GetModelMetadata, empty)
    assert (e.code(), e.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Metadata field graph is not supported")


def test_model_status(stubs):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "tiny"
    resp = stubs[1].GetModelStatus(req, timeout=10)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in resp.model_version_status] == \
        [(2, available, 0), (1, available, 0)]
    req.model_spec.version.value = 3
    e = rpc_error(stubs[1].GetModelStatus, req)
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find version 3 of model tiny")
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "nope"
    e = rpc_error(stubs[1].GetModelStatus, req)
    assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")


def test_second_model_of_the_config_file(stubs):
    resp = stubs[0].Predict(request(name="other", x=np.array([2.0], np.float32)), timeout=10)
    assert list(resp.outputs["y"].float_val) == [9.0] and resp.model_spec.version.value == 7


# ---- config ----

def test_bad_config_file_stops_with_tf_serving_message(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { name: 'x' base_path: ")
    with pytest.raises(ConfigError, match="^Error parsing text-format tensorflow.serving.ModelServerConfig"):
        read_config_file(str(path))


def test_config_round_trips_through_the_proto(models):
    proto = model_server_config_pb2.ModelServerConfig()
    c = proto.model_config_list.config.add(name="m", base_path=str(models / "tiny"), model_platform="tensorflow")
    c.model_version_policy.specific.versions.append(1)
    (config,) = parse_config_text(text_format.MessageToString(proto))
    assert (config.name, config.policy, config.aspired([1, 2, 3])) == ("m", "specific", [1])


# ---- REST ----

def rest(server, path, body=None):
    url = f"http://127.0.0.1:{server.rest_port}{path}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_row_and_columnar_predict(server):
    assert rest(server, "/v1/models/tiny:predict", {"instances": [1.0, 2.0]}) == (200, {"predictions": [3.5, 4.0]})
    assert rest(server, "/v1/models/tiny/versions/1:predict", {"inputs": [2.0]}) == (200, {"outputs": [3.0]})
    assert rest(server, "/v1/models/tiny/labels/stable:predict", {"inputs": {"x": [2.0]}}) == (200, {"outputs": [3.0]})
    status, body = rest(server, "/v1/models/tiny:predict",
                        {"signature_name": "mixed", "instances": [{"a": 1.0, "b": 2}, {"a": 0.5, "b": 1}]})
    assert status == 200 and body == {"predictions": [{"doubled": 4, "sum": 3.0, "tag": "2!"},
                                                      {"doubled": 2, "sum": 1.5, "tag": "1!"}]}
    status, body = rest(server, "/v1/models/tiny:predict",
                        {"signature_name": "echo", "inputs": [{"b64": "AAE="}, "hey"]})
    assert status == 200 and body == {"outputs": {"length": [2, 3], "s_bytes": [{"b64": "AAE="}, {"b64": "aGV5"}]}}


@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/models/tiny:predict", {"signature_name": "nope", "inputs": [1.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/tiny:predict", {"x": [1.0]}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/nope:predict", {"inputs": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/tiny/versions/9:predict", {"inputs": [1.0]}, 404,
     "Servable not found for request: Specific(tiny, 9)"),
    ("/v1/models/tiny:predict", {"inputs": {"x": [1.0], "z": [2.0]}}, 400,
     "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}."),
    ("/v1/models/tiny:predict", b"{not json", 400, None),
    ("/v1/models/tiny:predict", {"inputs": ["a"]}, 400, None),
])
def test_rest_errors(server, path, body, status, message):
    got_status, got = rest(server, path, body)
    assert got_status == status and set(got) == {"error"}
    if message:
        assert got["error"] == message


def test_rest_status_and_metadata(server):
    assert rest(server, "/v1/models/tiny/versions/2") == (200, {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, body = rest(server, "/v1/models/other/metadata")
    assert status == 200 and body["model_spec"] == {"name": "other", "signature_name": "", "version": "7"}
    assert set(body["metadata"]["signature_def"]["signatureDef"]) == {"serving_default", "mixed", "echo",
                                                                      "__saved_model_init_op"}
    assert rest(server, "/v1/models/nope")[0] == 404


# ---- hot swap ----

def test_new_version_is_swapped_in_under_load_with_no_failed_request(tmp_path):
    base = tmp_path / "swap"
    save_version(str(base), 1)
    failures, answers, stop = [], [], threading.Event()
    with ModelServer(single_model("swap", str(base)), port=0, poll_seconds=0.2) as server:
        def client():
            with grpc.insecure_channel(server.target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        resp = stub.Predict(request(name="swap", x=np.array([2.0], np.float32)), timeout=10)
                        answers.append((resp.model_spec.version.value, resp.outputs["y"].float_val[0]))
                    except grpc.RpcError as e:
                        failures.append(e)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        save_version(str(base), 2)
        deadline = time.time() + 60
        while time.time() < deadline and not any(v == 2 for v, _ in answers[-20:]):
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        states = dict(server.manager.version_states("swap"))
    assert failures == []
    assert {v for v, _ in answers} == {1, 2}
    assert all(y == 0.5 * 2 + 1 + v for v, y in answers)  # each answer came from the version it names
    assert states[2].state == "AVAILABLE" and states[1].state == "END"  # latest{1}: the old one is unloaded
    first_new = next(i for i, (v, _) in enumerate(answers) if v == 2)
    assert all(v == 2 for v, _ in answers[first_new + 50:])  # nobody is served the old version afterwards


# ---- client ----

def test_client_retries_unavailable_until_the_server_is_up(models):
    import socket

    from serving.client import ServingClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ModelServer(single_model("tiny", str(models / "tiny")), port=port, poll_seconds=0)
    timer = threading.Timer(1.0, server.start)
    timer.start()
    try:
        with ServingClient(f"127.0.0.1:{port}", "tiny", timeout=30, retries=10, backoff_seconds=0.1) as client:
            outputs, version = client.predict({"x": np.array([2.0], np.float32)})
        assert version == 2 and outputs["y"].tolist() == [4.0]
    finally:
        timer.join()
        server.stop()


def test_client_does_not_retry_other_errors_and_respects_the_deadline(server):
    from serving.client import ServingClient

    with ServingClient(server.target, "nope", timeout=5, retries=5) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.array([1.0], np.float32)})
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() - started < 1
    with ServingClient("127.0.0.1:1", "tiny", timeout=1.0, retries=100, backoff_seconds=0.05) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"x": np.array([1.0], np.float32)})
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - started < 3


def test_example_builder_checks_like_ingest(spec):
    import tensorflow as tf

    from schema.item_vectors import VectorTable
    from serving.examples import ExampleBuilder, FeatureError

    builder = ExampleBuilder(spec, VectorTable(["p1", "p2"], [[1.0, 2.0], [3.0, 4.0]]))
    ex = tf.train.Example.FromString(builder.from_features(
        {"client_type": 1, "follow_topic_id": ["3", "8", "3"], "all_topic_fav_7": {"3": 0.75, "11": 0.25},
         "read_post_id": ["p2", "new", "p1", "p2"]}))
    f = ex.features.feature
    # The read posts' vectors by value, one per post kept (the repeat dropped), zeros for one unknown.
    assert list(f["read_post_id"].bytes_list.value) == [b"p2", b"new", b"p1"]
    assert list(f["client_embed"].float_list.value) == [3.0, 4.0, 0.0, 0.0, 1.0, 2.0]
    item = tf.train.Example.FromString(builder.from_features({"post_id": "p1"})).features.feature
    assert list(item["item_embed"].float_list.value) == [1.0, 2.0]
    with pytest.raises(ValueError, match="content vectors"):
        ExampleBuilder(spec, None)
    assert list(f["client_type"].int64_list.value) == [1]
    assert list(f["follow_topic_id"].bytes_list.value) == [b"3", b"8"]  # duplicate dropped, as in ingest
    assert list(f["all_topic_fav_7"].bytes_list.value) == [b"3", b"11"]
    assert list(f["all_topic_fav_7_weight"].float_list.value) == [0.75, 0.25]
    assert "post_id" not in f and "act" not in f and "item_embed" not in f
    with pytest.raises(FeatureError, match="unknown feature"):
        builder.from_features({"clienttype": 1})
    with pytest.raises(FeatureError, match="bad_weight"):
        builder.from_features({"all_topic_fav_7": {"3": -1}})
    with pytest.raises(FeatureError, match="field_count"):
        builder.from_log_line("1\tu1\tp1")


# ---- infra validation ----

def test_infra_validation_refuses_a_model_without_tower_signatures(tmp_path):
    import shutil

    from components.infra_validator import validate
    from tests.serving_models import save_version

    # A SavedModel that loads and serves, but has no user_embedding / item_embedding signature.
    save_version(str(tmp_path / "export"), 1)
    model_dir = str(tmp_path / "Format-Serving")
    shutil.move(str(tmp_path / "export" / "1"), model_dir)
    for tower in ("user", "item"):
        shutil.copytree(model_dir, f"{model_dir}-{tower}")
    report = validate(model_dir, [b""], "dssm", str(tmp_path / "out"), timeout_seconds=120)
    assert report["blessed"] is False
    assert report["error"] == 'FAILED_PRECONDITION: Serving signature key "user_embedding" not found.'
    assert report["load_seconds"] > 0  # it did load: the failure is the query, not the start
    assert (tmp_path / "out" / "server.log").stat().st_size > 0


def test_infra_validation_refuses_a_model_that_does_not_load(tmp_path):
    from components.infra_validator import validate

    model_dir = tmp_path / "Format-Serving"
    for d in (model_dir, tmp_path / "Format-Serving-user", tmp_path / "Format-Serving-item"):
        (d / "variables").mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"not a SavedModel")
        (d / "variables" / "variables.index").write_bytes(b"not an index")
        (d / "variables" / "variables.data-00000-of-00001").write_bytes(b"no data")
    report = validate(str(model_dir), [b""], "dssm", str(tmp_path / "out"), timeout_seconds=120)
    assert report["blessed"] is False
    assert report["error"].startswith("RuntimeError: dssm: no version loaded: version 1: ")


def test_infra_validation_refuses_an_incomplete_model_at_once(tmp_path):
    from components.infra_validator import validate

    model_dir = tmp_path / "Format-Serving"
    for d in (model_dir, tmp_path / "Format-Serving-user", tmp_path / "Format-Serving-item"):
        d.mkdir()
        (d / "saved_model.pb").write_bytes(b"not a SavedModel")
    started = time.monotonic()
    report = validate(str(model_dir), [b""], "dssm", str(tmp_path / "out"), timeout_seconds=120)
    assert report["blessed"] is False and time.monotonic() - started < 10
    lacks = "version 1 is not a complete SavedModel (no variables/variables.index)"
    assert report["error"] == f"RuntimeError: dssm {lacks}; dssm_user {lacks}; dssm_item {lacks}"
