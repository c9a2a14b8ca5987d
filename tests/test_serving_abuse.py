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
                        "--max_request_bytes", str(64 * 1024)], str(tmp_path / "server.log"), timeout=120)
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
