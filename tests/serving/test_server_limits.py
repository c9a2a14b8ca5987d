"""The model server under concurrency and churn (issue [server-limits]), over real sockets: a version
that fails to load never takes the serving one down however its files churn, reloads cannot starve
predictions, every directory and file a version is loaded from lies under the roots, and the entries
of serialized tf.Examples are counted from their wire format, never by building them. Each test
names the item of the issue it covers; the expected answers are the tiny model's 0.5 x + (1 + v).
"""
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.model_config import parse_config_text
from serving.server import ModelServer
from tests.serving_models import save_version


def _config(**bases) -> str:
    entries = "".join(f' config {{ name: "{n}" base_path: "{p}" }}' for n, p in bases.items())
    return "model_config_list {" + entries + " }"


def _predict(stub, name="m", timeout=5.0) -> float:
    from serving.tensors import array_to_proto

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(array_to_proto(np.array([2.0], np.float32)))
    return float(stub.Predict(request, timeout=timeout).outputs["y"].float_val[0])


def _states(server, name="m") -> dict:
    return {v: s for v, s in server.manager.version_states(name)}


# ---- 2. a failed load never unloads the serving version ----

def test_2_a_broken_next_version_whose_files_churn_never_takes_the_serving_one_down(tmp_path):
    """Version 2 ships warmup requests that are not a TFRecord file, rewritten every 0.2 s for 4 s (a
    push tool retrying): version 1 answers every predict meanwhile (0.5 * 2 + 2 = 3.0). Once the file
    is removed and the files have settled, version 2 loads (0.5 * 2 + 3 = 4.0)."""
    save_version(str(tmp_path / "m"), 1)
    source = save_version(str(tmp_path / "src"), 2)
    configs = parse_config_text(_config(m=tmp_path / "m"))
    answers, failures, stop = [], [], threading.Event()
    with ModelServer(configs, port=0, poll_seconds=0.1, roots=[str(tmp_path / "m")]) as server:
        shutil.copytree(source, tmp_path / "m" / ".copy-2")
        warmup = tmp_path / "m" / ".copy-2" / "assets.extra" / "tf_serving_warmup_requests"
        warmup.parent.mkdir(exist_ok=True)
        warmup.write_bytes(b"not a TFRecord file")
        os.rename(tmp_path / "m" / ".copy-2", tmp_path / "m" / "2")
        warmup = tmp_path / "m" / "2" / "assets.extra" / "tf_serving_warmup_requests"

        def churn():  # each write replaces the file whole: a reader never sees it empty (a valid, empty file)
            for i in range(20):
                (warmup.parent / "next").write_bytes(b"not a TFRecord file, try %d" % i)
                os.replace(warmup.parent / "next", warmup)
                time.sleep(0.2)

        def predict():
            with grpc.insecure_channel(server.target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        answers.append(_predict(stub))
                    except grpc.RpcError as e:
                        failures.append(f"{e.code().name}: {e.details()}")
                    time.sleep(0.01)

        writer, reader = threading.Thread(target=churn), threading.Thread(target=predict)
        writer.start()
        reader.start()
        writer.join()
        time.sleep(1.0)
        stop.set()
        reader.join()
        assert not failures, f"{len(failures)} of {len(answers) + len(failures)} predicts failed: {failures[:3]}"
        assert len(answers) > 50 and set(answers) == {3.0}
        states = _states(server)
        assert states[1].state == "AVAILABLE" and states[2].state == "END" and states[2].error_message
        warmup.unlink()
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while _predict(stub) != 4.0:
                assert time.monotonic() < deadline, "the fixed version 2 was never retried"
                time.sleep(0.2)


# ---- 3. a reload storm does not starve predictions ----

def test_3_a_reload_storm_leaves_every_predict_within_its_deadline(tmp_path):
    """24 clients alternate two reload configs (the model alone, and with 4 copies of it under other
    names) while 2 clients predict with a 5 s deadline: every predict answers, right; a reload is
    applied or refused at once (ABORTED: another reload is in progress), never queued."""
    save_version(str(tmp_path / "models" / "m"), 1)
    for n in range(4):
        save_version(str(tmp_path / "models" / f"copy{n}"), 1)
    small = _config(m=tmp_path / "models" / "m")
    large = _config(m=tmp_path / "models" / "m", **{f"copy{n}": tmp_path / "models" / f"copy{n}" for n in range(4)})
    configs = parse_config_text(small)
    predicts, predict_failures, reloads, stop = [], [], [], threading.Event()
    with ModelServer(configs, port=0, poll_seconds=0.5, roots=[str(tmp_path / "models")]) as server:
        def reloader(n):
            from google.protobuf import text_format

            with grpc.insecure_channel(server.target) as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                i = n
                while not stop.is_set():
                    request = model_management_pb2.ReloadConfigRequest()
                    text_format.Parse(large if i % 2 else small, request.config)
                    i += 1
                    started = time.monotonic()
                    try:
                        stub.HandleReloadConfigRequest(request, timeout=60)
                        reloads.append(("OK", time.monotonic() - started))
                    except grpc.RpcError as e:
                        reloads.append((e.code().name, time.monotonic() - started))

        def predictor():
            with grpc.insecure_channel(server.target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        predicts.append(_predict(stub, timeout=5.0))
                    except grpc.RpcError as e:
                        predict_failures.append(f"{e.code().name}: {e.details()}")

        threads = [threading.Thread(target=reloader, args=(n,)) for n in range(24)]
        threads += [threading.Thread(target=predictor) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(15)
        stop.set()
        for t in threads:
            t.join()
    assert not predict_failures, f"{len(predict_failures)} of {len(predicts)} predicts failed: {predict_failures[:3]}"
    assert len(predicts) > 20 and set(predicts) == {3.0}
    codes = {code for code, _ in reloads}
    assert "OK" in codes and codes <= {"OK", "ABORTED"}, sorted(codes)
    # Refused at once, not queued behind the reload in progress (the code before queued every reload
    # on the gRPC pool: all OK, one after another, and no ABORTED at all).
    refused = [seconds for code, seconds in reloads if code == "ABORTED"]
    assert refused and max(refused) < 2.0, (len(refused), max(refused, default=None))


# ---- 4. nothing outside the roots is opened ----

def test_4_a_version_directory_linked_out_of_the_roots_is_refused_and_reported(tmp_path):
    save_version(str(tmp_path / "models" / "m"), 1)
    evil = save_version(str(tmp_path / "outside" / "evil"), 2)  # a real model outside the roots
    configs = parse_config_text(_config(m=tmp_path / "models" / "m"))
    with ModelServer(configs, port=0, poll_seconds=0, roots=[str(tmp_path / "models")]) as server:
        os.symlink(evil, tmp_path / "models" / "m" / "2")
        os.makedirs(tmp_path / "models" / "m" / "3")  # a real directory whose files link out
        for entry in os.listdir(evil):
            os.symlink(os.path.join(evil, entry), tmp_path / "models" / "m" / "3" / entry)
        server.manager.poll_once()
        states = _states(server)
        assert states[1].state == "AVAILABLE"
        for v in (2, 3):
            assert states[v].state == "END" and "outside the model base path roots" in states[v].error_message, \
                states[v].error_message
        with grpc.insecure_channel(server.target) as channel:
            assert _predict(prediction_service_pb2_grpc.PredictionServiceStub(channel)) == 3.0


def test_4_a_base_path_planted_as_a_link_after_the_reload_loads_nothing(tmp_path):
    save_version(str(tmp_path / "models" / "m"), 1)
    evil = save_version(str(tmp_path / "outside" / "evil"), 1)
    configs = parse_config_text(_config(m=tmp_path / "models" / "m"))
    with ModelServer(configs, port=0, poll_seconds=0, roots=[str(tmp_path / "models")]) as server:
        server.manager.reload(parse_config_text(_config(m=tmp_path / "models" / "m",
                                                        later=tmp_path / "models" / "later")))
        os.symlink(os.path.dirname(evil), tmp_path / "models" / "later")
        server.manager.poll_once()
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as e:
            _predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), name="later")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "later"
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as e:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "outside the model base path roots" in e.value.details(), e.value.details()


def test_4_a_base_path_with_a_nul_byte_is_invalid_argument(tmp_path):
    save_version(str(tmp_path / "models" / "m"), 1)
    configs = parse_config_text(_config(m=tmp_path / "models" / "m"))
    with ModelServer(configs, port=0, poll_seconds=0, roots=[str(tmp_path / "models")]) as server:
        request = model_management_pb2.ReloadConfigRequest()
        entry = request.config.model_config_list.config.add(name="m")
        entry.base_path = str(tmp_path / "models" / "m") + "\x00x"
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as e:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in e.value.details()


# ---- 1. entries counted from the wire format ----

def _by_hand(data: bytes) -> int:
    """The entries of one serialized tf.Example, counted on the parsed message (protobuf's own parser):
    one for the example, and per feature its values (at least one)."""
    example = example_pb2.Example.FromString(data)
    total = 1
    for feature in example.features.feature.values():
        kind = feature.WhichOneof("kind")
        total += max(len(getattr(feature, kind).value) if kind else 0, 1)
    return total


def test_1_example_entries_from_the_wire_format_equal_the_parsed_count():
    from serving.request_cost import example_entries

    rng = np.random.default_rng(3)
    examples = [example_pb2.Example()]
    for _ in range(40):
        ex = example_pb2.Example()
        for f in range(rng.integers(0, 6)):
            kind = rng.integers(0, 4)
            feature = ex.features.feature[f"f{f}"]
            n = int(rng.integers(0, 300))
            if kind == 0:
                feature.bytes_list.value.extend([b"x" * int(rng.integers(0, 200)) for _ in range(n)])
            elif kind == 1:
                feature.float_list.value.extend(rng.normal(size=n).tolist())
            elif kind == 2:
                feature.int64_list.value.extend(rng.integers(-2**63, 2**63 - 1, size=n).tolist())
            # kind 3: a feature with no list at all
        examples.append(ex)
    for ex in examples:
        data = ex.SerializeToString()
        assert example_entries(data, 1 << 40) == _by_hand(data)
    empty = example_pb2.Example()
    empty.features.feature["read_post_id"].bytes_list.value.extend([b""] * 7_000_000)
    data = empty.SerializeToString()
    assert example_entries(data, 1000) > 1000  # stops counting past the budget
    for garbage in (b"\x0a\xff\xff\xff\xff\x0f", data[:-3], b"\x0f\x00"):
        with pytest.raises(ValueError):
            example_entries(garbage, 1 << 40)


def test_1_sixteen_concurrent_bombs_cost_a_bounded_peak_and_leave_nothing_behind(tmp_path):
    """16 gRPC Predicts at once, each one 14 MB tf.Example of 7,340,032 empty values (under the 16 MiB
    request limit), to a model that takes serialized examples: all refused INVALID_ARGUMENT; the
    server's peak RSS over idle (VmHWM, reset first) stays under 1 GiB and under 100 MB is left."""
    from serving.server import spawn
    from serving.tensors import array_to_proto
    from tests.load_driver import rss_bytes
    from tests.serving_models import save_lists_version

    save_lists_version(str(tmp_path / "lists"), 1)
    proc, port = spawn(["--model_name", "lists", "--model_base_path", str(tmp_path / "lists")],
                       str(tmp_path / "server.log"), timeout=120)
    try:
        ex = example_pb2.Example()
        ex.features.feature["ids"].bytes_list.value.extend([b""] * 7_340_032)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "lists"
        request.inputs["examples"].CopyFrom(array_to_proto(np.array([ex.SerializeToString()], dtype=object)))
        assert 14e6 < request.ByteSize() < 16 << 20
        time.sleep(1)
        idle = rss_bytes(proc.pid)
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current RSS
        codes = []

        def bomb():
            with grpc.insecure_channel(f"127.0.0.1:{port}",
                                       options=[("grpc.max_send_message_length", 32 << 20)]) as channel:
                try:
                    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)

        threads = [threading.Thread(target=bomb) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with open(f"/proc/{proc.pid}/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        time.sleep(2)
        after = rss_bytes(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert codes == ["INVALID_ARGUMENT"] * 16, codes
    assert (peak - idle) / 2**20 < 1024, f"peak {(peak - idle) / 2**20:.0f} MiB over idle"
    assert (after - idle) / 2**20 < 100, f"{(after - idle) / 2**20:.0f} MiB left behind"


# ---- lower: ingest reads a line under a byte limit; NUL in ids ----

def test_a_gz_line_that_inflates_without_end_costs_bounded_memory_and_is_rejected(tmp_path):
    """A small .gz whose second line inflates to 64 MiB with no newline, then a good line: the reader
    holds at most about a MiB of it (tracemalloc's peak), hands over its first MAX_LINE_BYTES + 1 bytes,
    which the parser rejects (line_too_long), and the next line is read as usual."""
    import gzip
    import tracemalloc

    from schema.logfiles import read_lines
    from schema.rows import MAX_LINE_BYTES, Rejected, RowParser
    from schema.spec import load_spec

    spec = load_spec()
    good = "1\tu1\tp1\t1\t3\t3:0.5\t3\tp2\n"
    path = tmp_path / "bomb.tsv.gz"
    with gzip.open(path, "wb") as f:
        f.write(("\t".join(spec.columns) + "\n").encode())
        for _ in range(64):
            f.write(b"a" * (1 << 20))
        f.write(b"\n" + good.encode())
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    lines = [(n, len(line), line[:20]) for _, n, line in read_lines(str(path))]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(n, size) for n, size, _ in lines] == [(2, MAX_LINE_BYTES + 1), (3, len(good))]
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
    parser = RowParser(spec)
    with pytest.raises(Rejected) as e:
        parser.parse(b"a" * (MAX_LINE_BYTES + 1))
    assert e.value.reason == "line_too_long"
    with pytest.raises(Rejected) as e:
        parser.parse(good.replace("p1", "p\x001").encode())
    assert e.value.reason == "nul_byte:post_id"
    assert parser.parse(good.encode()).strings["post_id"] == [b"p1"]


@pytest.mark.parametrize("text", ["1e-400", "-2.5e-999", "0.000001e-330"])
def test_a_number_below_float64s_smallest_is_refused_not_read_as_zero(text):
    """1e-400 read as 0.0 with no word; 0, 0.0 and 0e-400 are zero and stay accepted."""
    from schema.numbers import NumberError, parse_float32
    from serving.http_transport import JSON_DECODER

    with pytest.raises(NumberError, match="too small"):
        parse_float32(text)
    with pytest.raises(ValueError, match="too small"):
        JSON_DECODER.decode(f'{{"w": [{text}]}}')
    for zero in ("0", "0.0", "0e-400", "-0.000"):
        assert parse_float32(zero) == 0.0 and JSON_DECODER.decode(f"[{zero}]") == [0.0]


def test_1_a_huge_saved_model_pb_and_a_lying_contract_are_refused_before_they_cost(tmp_path):
    """A version whose saved_model.pb is a 3 GiB sparse file is refused from its size (nothing read);
    one whose serving contract has a NaN minimum or a negative row cost is refused, not served with
    the check off. The version before keeps serving."""
    import json

    from tests.serving_models import save_lists_version

    save_lists_version(str(tmp_path / "m"), 1)
    configs = parse_config_text(_config(m=tmp_path / "m"))
    with ModelServer(configs, port=0, poll_seconds=0, roots=[str(tmp_path / "m")]) as server:
        for version, damage in ((2, "sparse"), (3, "nan"), (4, "negative")):
            shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / str(version))
            contract = tmp_path / "m" / str(version) / "assets.extra" / "serving_contract.json"
            if damage == "sparse":
                with open(tmp_path / "m" / str(version) / "saved_model.pb", "r+b") as f:
                    f.truncate(3 << 30)
            else:
                d = json.loads(contract.read_text())
                if damage == "nan":
                    d["minimum"] = {k: float("nan") for k in d.get("minimum", {})} or {"w": float("nan")}
                else:
                    d["signatures"] = {k: {**v, "floats_per_row": -1} for k, v in d["signatures"].items()}
                contract.write_text(json.dumps(d))
            server.manager.poll_once()
            states = _states(server)
            assert states[version].state == "END", damage
            assert server.manager.resolve("m").version == 1
        assert "not read" in states[2].error_message
        assert "finite number" in states[3].error_message and "floats_per_row" in states[4].error_message


def test_1_requests_in_flight_share_one_memory_budget(tmp_path):
    """A budget that holds two 1 MB requests at a time: 8 sent at once all get their right answers
    (the others wait their turn), the budget's high-water mark never passes it, and a request larger
    than the whole budget is RESOURCE_EXHAUSTED over gRPC and 429 over REST, at once."""
    import http.client
    import json

    from serving.request_cost import GRPC_COPIES, RequestLimits
    from serving.tensors import array_to_proto

    save_version(str(tmp_path / "m"), 1)
    x = np.arange(250_000, dtype=np.float32)  # 1 MB of floats: 0.5 x + 2 by hand
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(array_to_proto(x))
    budget = 2 * GRPC_COPIES * request.ByteSize() + 1000
    configs = parse_config_text(_config(m=tmp_path / "m"))
    limits = RequestLimits(max_entries=0, max_inflight_bytes=budget, max_response_bytes=64 << 20)
    with ModelServer(configs, port=0, rest_api_port=0, poll_seconds=0, roots=[str(tmp_path / "m")],
                     limits=limits) as server:
        answers, errors = [], []

        def send():
            with grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", -1)]) as c:
                try:
                    y = prediction_service_pb2_grpc.PredictionServiceStub(c).Predict(request, timeout=60)
                    answers.append(np.asarray(y.outputs["y"].float_val, np.float32))
                except grpc.RpcError as e:
                    errors.append(e.code().name)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(answers) == 8
        assert all(np.allclose(a, 0.5 * x + 2) for a in answers)
        assert 0 < server.inflight.peak <= budget and server.inflight.used == 0
        big = predict_pb2.PredictRequest()
        big.model_spec.name = "m"
        big.inputs["x"].CopyFrom(array_to_proto(np.zeros(1_000_000, np.float32)))
        with grpc.insecure_channel(server.target) as c, pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(c).Predict(big, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max_inflight_request_bytes" in e.value.details()
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        conn.request("POST", "/v1/models/m:predict", json.dumps({"instances": [1.5] * 400_000}))
        response = conn.getresponse()
        assert response.status == 429 and "--max_inflight_request_bytes" in json.loads(response.read())["error"]
        conn.close()
