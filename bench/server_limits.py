"""The model server under concurrency and churn, this checkout against another (a baseline) in one run:

1. 16 concurrent gRPC Predicts, each one 14 MB tf.Example of 7,340,032 empty values (refused): the
   server's peak RSS over idle (VmHWM, reset first) and what is left 2 s after;
2. a broken next version whose warmup file is rewritten every 0.2 s for 10 s: predicts of the model
   that failed (NOT_FOUND and others) meanwhile;
3. 24 clients alternating two reload configs for 15 s beside 2 predicting clients (5 s deadline):
   failed predicts, and how the reloads were answered;
4. a version directory linked to a SavedModel outside the roots: loaded or not.

    .venv/bin/python bench/server_limits.py [--baseline DIR]   # DIR: a checkout (git worktree) of the baseline

Each server is this project's `serving.server` in its own process, run from the checkout's code.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.server import spawn  # noqa: E402
from serving.tensors import array_to_proto  # noqa: E402
from tests.load_driver import rss_bytes  # noqa: E402
from tests.serving_models import save_lists_version, save_version  # noqa: E402


def _config(**bases) -> str:
    return "model_config_list {" + "".join(f' config {{ name: "{n}" base_path: "{p}" }}'
                                            for n, p in bases.items()) + " }"


def _write_config(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def _predict(stub, name="m", timeout=5.0) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(array_to_proto(np.array([2.0], np.float32)))
    return float(stub.Predict(request, timeout=timeout).outputs["y"].float_val[0])


def bombs(tmp: str, checkout: str | None) -> dict:
    save_lists_version(os.path.join(tmp, "lists"), 1)
    proc, port = spawn(["--model_name", "lists", "--model_base_path", os.path.join(tmp, "lists")],
                       os.path.join(tmp, "bombs.log"), 180, cwd=checkout)
    try:
        ex = example_pb2.Example()
        ex.features.feature["ids"].bytes_list.value.extend([b""] * 7_340_032)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "lists"
        request.inputs["examples"].CopyFrom(array_to_proto(np.array([ex.SerializeToString()], dtype=object)))
        time.sleep(1)
        idle = rss_bytes(proc.pid)
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")
        codes = []

        def bomb():
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 32 << 20)]) as c:
                try:
                    prediction_service_pb2_grpc.PredictionServiceStub(c).Predict(request, timeout=300)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)

        started = time.perf_counter()
        threads = [threading.Thread(target=bomb) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        with open(f"/proc/{proc.pid}/status") as f:
            peak = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
        time.sleep(2)
        after = rss_bytes(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return {"codes": sorted(set(codes)), "peak_mib": round((peak - idle) / 2**20),
            "left_mib": round((after - idle) / 2**20), "seconds": round(seconds, 1)}


def churn(tmp: str, checkout: str | None) -> dict:
    base = os.path.join(tmp, "churn", "m")
    save_version(base, 1)
    source = save_version(os.path.join(tmp, "churn-src"), 2)
    config = _write_config(os.path.join(tmp, "churn", "models.config"), _config(m=base))
    proc, port = spawn(["--model_config_file", config, "--file_system_poll_wait_seconds", "0.1"],
                       os.path.join(tmp, "churn.log"), 180, cwd=checkout)
    ok, failed, stop = [0], {}, threading.Event()
    try:
        staged = os.path.join(base, ".copy")
        shutil.copytree(source, staged)
        os.makedirs(os.path.join(staged, "assets.extra"), exist_ok=True)
        warmup = os.path.join(base, "2", "assets.extra", "tf_serving_warmup_requests")
        with open(os.path.join(staged, "assets.extra", "tf_serving_warmup_requests"), "wb") as f:
            f.write(b"not a TFRecord file")
        os.rename(staged, os.path.join(base, "2"))

        def predict():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        _predict(stub)
                        ok[0] += 1
                    except grpc.RpcError as e:
                        failed[e.code().name] = failed.get(e.code().name, 0) + 1
                    time.sleep(0.02)

        reader = threading.Thread(target=predict)
        reader.start()
        for i in range(50):  # replaced whole: never seen empty (an empty warmup file is valid)
            with open(warmup + ".next", "wb") as f:
                f.write(b"not a TFRecord file, try %d" % i)
            os.replace(warmup + ".next", warmup)
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        reader.join()
    finally:
        proc.kill()
        proc.wait()
    return {"answered": ok[0], "failed": failed}


def storm(tmp: str, checkout: str | None) -> dict:
    models = os.path.join(tmp, "storm")
    for name in ("m", "copy0", "copy1", "copy2", "copy3"):
        save_version(os.path.join(models, name), 1)
    small = _config(m=os.path.join(models, "m"))
    large = _config(**{n: os.path.join(models, n) for n in ("m", "copy0", "copy1", "copy2", "copy3")})
    config = _write_config(os.path.join(models, "models.config"), small)
    proc, port = spawn(["--model_config_file", config], os.path.join(tmp, "storm.log"), 180, cwd=checkout)
    ok, failed, reloads, stop = [0], {}, {}, threading.Event()
    try:
        def reloader(n):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub, i = model_service_pb2_grpc.ModelServiceStub(channel), n
                while not stop.is_set():
                    request = model_management_pb2.ReloadConfigRequest()
                    text_format.Parse(large if i % 2 else small, request.config)
                    i += 1
                    try:
                        stub.HandleReloadConfigRequest(request, timeout=60)
                        code = "OK"
                    except grpc.RpcError as e:
                        code = e.code().name
                    reloads[code] = reloads.get(code, 0) + 1

        def predictor():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                while not stop.is_set():
                    try:
                        _predict(stub, timeout=5.0)
                        ok[0] += 1
                    except grpc.RpcError as e:
                        failed[e.code().name] = failed.get(e.code().name, 0) + 1

        threads = [threading.Thread(target=reloader, args=(n,)) for n in range(24)]
        threads += [threading.Thread(target=predictor) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(15)
        stop.set()
        for t in threads:
            t.join()
    finally:
        proc.kill()
        proc.wait()
    return {"predicts": ok[0], "failed_predicts": failed, "reloads": reloads}


def roots(tmp: str, checkout: str | None) -> dict:
    base = os.path.join(tmp, "roots", "models", "m")
    save_version(base, 1)
    evil = save_version(os.path.join(tmp, "roots", "outside", "evil"), 2)  # answers 0.5 x + 3
    proc, port = spawn(["--model_name", "m", "--model_base_path", base, "--file_system_poll_wait_seconds", "0.2"],
                       os.path.join(tmp, "roots.log"), 180, cwd=checkout)
    try:
        os.symlink(evil, os.path.join(base, "2"))
        time.sleep(5)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = _predict(prediction_service_pb2_grpc.PredictionServiceStub(channel))
    finally:
        proc.kill()
        proc.wait()
    return {"outside_model_loaded": answer == 4.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="a checkout of the baseline's code (e.g. a git worktree)")
    args = p.parse_args()
    checkouts = [("this checkout", None)] + ([(f"baseline {args.baseline}", args.baseline)] if args.baseline else [])
    print(f"{os.cpu_count()} CPUs; each server in its own process")
    for label, checkout in checkouts:
        for name, fn in (("bombs", bombs), ("churn", churn), ("storm", storm), ("roots", roots)):
            with tempfile.TemporaryDirectory() as tmp:
                print(f"{label:<40} {name:<6} {fn(tmp, checkout)}", flush=True)


if __name__ == "__main__":
    main()
