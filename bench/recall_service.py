"""The recall service (python -m retrieval.service) under load: p50/p99 and requests/s at 1, 8 and 32
concurrent clients over gRPC and over REST, on the demo's catalog and on a catalog grown to --big
posts; beside it, in the same run, the parts alone at the same concurrency (the item-store read of
the user's history vectors, the user tower's Predict on the model server, the Milvus search).

    .venv/bin/python bench/recall_service.py [--workdir runs/demo] [--requests 480] [--clients 1,8,32]
                                             [--big 100000]

Needs a run that pushed a model (make demo); the run's Milvus Lite file is copied, never changed. The
model server (this project's, TF Serving's protocol) and the service run as processes of their own on
loopback; the clients are threads of this process, one connection each (REST kept alive). Every
answer of the service is compared with the parts' answer for the same user: wrong answers are counted.
The service's cost is its p50 (p99) less the sum of the parts' p50s (p99s) at the same concurrency;
its throughput is shown against the slowest part alone and against the parts composed (1 / the sum of
1 / each part's rate: what the three cost one after another when they share the same CPUs, as the
model server, Milvus Lite and the service do on one machine).
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from common import signature_names  # noqa: E402
from retrieval.backends import open_index  # noqa: E402
from retrieval.index import IndexConfig  # noqa: E402
from retrieval.item_store import ItemStore  # noqa: E402
from retrieval.recall import Recaller, ServingTowers  # noqa: E402
from retrieval.service import protos  # noqa: E402
from schema.spec import load_spec  # noqa: E402
from serving.client import ServingClient, read_log_lines  # noqa: E402
from serving.server import spawn  # noqa: E402

K = 50


def quantiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def load(call, clients: int, total: int, errors: list | None = None) -> tuple[list[float], float]:
    """call(i) for i in range(total), spread over `clients` threads: (each call's seconds, wall seconds);
    a call that raises is put in `errors` (raised again when None)."""
    times, lock = [], threading.Lock()
    counter = iter(range(total))

    def worker():
        mine = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            try:
                call(i)
            except Exception as e:  # noqa: BLE001 - counted
                if errors is None:
                    raise
                errors.append(repr(e))
                continue
            mine.append(time.perf_counter() - t)
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, time.perf_counter() - started


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grow_catalog(db: str, target: str, spec, size: int, seed: int = 7) -> dict:
    """Adds synthetic posts (random content vectors, the catalog's topics) to the item store of the
    Lite file until it holds `size`, then writes a new generation of every stored post through the
    served item tower (ItemIndexer's path, retrieval.catalog.index_store)."""
    from retrieval.catalog import ModelVocabulary, index_store
    from retrieval.index import Batch
    from serving.examples import ExampleBuilder

    config = IndexConfig(uri=db)
    index = open_index(config)
    store = ItemStore(config, spec.item_id, client=index.client)
    rng = np.random.default_rng(seed)
    topics = sorted({t for b in store.scan() for t in b.scalars["topic_id"] if t})
    missing = size - store.count()
    for start in range(0, missing, 5000):
        n = min(5000, missing - start)
        store.upsert(Batch([f"synthetic-{start + i}" for i in range(n)],
                           {"topic_id": list(rng.choice(topics, n))},
                           rng.normal(size=(n, store.dim)).astype(np.float32)))
    _, version = index.generation()
    with ServingClient(target, "dssm", timeout=60) as client:
        vocabulary = ModelVocabulary(os.path.join(os.path.dirname(db), "serving", "dssm"), spec)
        result = index_store(index, store, ServingTowers(client).item, vocabulary, ExampleBuilder(spec, store), spec,
                             version)
    index.close()
    return result


def parts(db: str, target: str, spec, lines: list[str], clients: list[int], total: int) -> tuple[dict, list]:
    """Each part alone at each concurrency, in this process: {clients: {part: (p50, p99, req/s)}}, and
    each user's expected hit ids (the parts composed, as the service composes them)."""
    from milvus_lite.server_manager import server_manager_instance

    config = IndexConfig(uri=db)
    index = open_index(config)
    store = ItemStore(config, spec.item_id, client=index.client)
    client = ServingClient(target, "dssm", timeout=30)
    recaller = Recaller(ServingTowers(client), index, spec, store)
    generation, version = index.generation()
    fields = sorted(index.describe(generation).fields - {spec.item_id})  # as the service: every stored field
    texts = [dict(zip(spec.columns, line.split("\t"), strict=False)) for line in lines]
    examples = [recaller.examples.from_log_line(line) for line in lines]
    read = [recaller.read_posts(t) for t in texts]
    histories = [[x for x in t.get("read_post_id", "").split(",") if x] for t in texts]
    users = np.concatenate([client.embeddings(signature_names.USER, examples[i:i + 64], version)
                            for i in range(0, len(examples), 64)])
    expected = [[h["id"] for h in hits] for hits in index.search(users, K, exclude=read, output_fields=fields,
                                                                 generation=generation)]
    calls = {
        "item store read": lambda i: store.vectors(histories[i % len(lines)] or ["none"]),
        "user tower": lambda i: client.embeddings(signature_names.USER, [examples[i % len(lines)]], version),
        "Milvus search": lambda i: index.search(users[i % len(lines)][None], K, exclude=[read[i % len(lines)]],
                                                output_fields=fields, generation=generation),
    }
    figures = {}
    for n in clients:
        figures[n] = {}
        for name, call in calls.items():
            load(call, n, max(n * 4, 20))  # warm
            times, wall = load(call, n, total)
            figures[n][name] = (*quantiles(times), len(times) / wall)
    client.close()
    index.close()
    server_manager_instance.release_server(config.uri)
    return figures, expected


class Service:
    def __init__(self, workdir: str, target: str, log_path: str):
        port_file = os.path.join(workdir, f"service-ports-{time.monotonic_ns()}")
        self.started = time.perf_counter()
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "retrieval.service", "--workdir", workdir,
                                          "--model_target", target, "--port", "0", "--rest_api_port", str(free_port()),
                                          "--port_file", port_file], cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited: {open(log_path).read()[-2000:]}")
            time.sleep(0.02)
        self.start_seconds = time.perf_counter() - self.started
        self.port, self.rest_port = (int(p) for p in open(port_file).read().split())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def service_load(svc: Service, lines: list[str], expected: list, clients: list[int], total: int) -> dict:
    """{clients: {"gRPC"|"REST": (p50, p99, req/s, wrong)}}: each client its own channel or connection."""
    pb2, pb2_grpc = protos.load()
    local = threading.local()
    wrong, errors = [], []

    def check(i, ids):
        if ids != expected[i % len(lines)]:
            wrong.append(i)

    def over_grpc(i):
        if not hasattr(local, "stub"):
            local.stub = pb2_grpc.RecallServiceStub(grpc.insecure_channel(f"127.0.0.1:{svc.port}"))
        answer = local.stub.Recall(pb2.RecallRequest(queries=[pb2.Query(log_line=lines[i % len(lines)])], k=K),
                                   timeout=30)
        check(i, [h.id for h in answer.answers[0].hits])

    def over_rest(i):
        if not hasattr(local, "http"):
            local.http = http.client.HTTPConnection("127.0.0.1", svc.rest_port, timeout=30)
        local.http.request("POST", "/v1/recall", json.dumps({"log_line": lines[i % len(lines)], "k": K}),
                           {"Content-Type": "application/json"})
        response = local.http.getresponse()
        body = json.loads(response.read())
        check(i, [h["id"] for h in body["hits"]] if response.status == 200 else None)

    figures = {}
    for n in clients:
        figures[n] = {}
        for name, call in (("gRPC", over_grpc), ("REST", over_rest)):
            local.__dict__.clear()
            load(call, n, max(n * 4, 20), errors)  # warm; new connections per thread
            before = len(wrong) + len(errors)
            times, wall = load(call, n, total, errors)
            figures[n][name] = (*quantiles(times or [0.0]), len(times) / wall, len(wrong) + len(errors) - before)
    if errors:
        print(f"{len(errors)} failed requests, e.g. {errors[0][:300]}")
    return figures


def report(title: str, part_figures: dict, service_figures: dict, start_seconds: float) -> None:
    print(f"\n{title}  (service started and answering in {start_seconds:.1f} s)")
    print(f"{'clients':>7}  {'path':<18}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'wrong/failed':>13}"
          f"{'+p50 ms':>9}{'+p99 ms':>9}{'x slowest part':>16}{'x composed':>12}")
    for n in service_figures:
        p = part_figures[n]
        for name, (p50, p99, rate) in p.items():
            print(f"{n:>7}  {name:<18}{p50:>9.2f}{p99:>9.2f}{rate:>9.0f}")
        floor50 = sum(v[0] for v in p.values())
        floor99 = sum(v[1] for v in p.values())
        slowest = min(v[2] for v in p.values())
        composed = 1 / sum(1 / v[2] for v in p.values())  # the parts one after another on the same CPUs
        print(f"{n:>7}  {'parts, summed':<18}{floor50:>9.2f}{floor99:>9.2f}{slowest:>9.0f}  (composed: "
              f"{composed:.0f} req/s)")
        for name, (p50, p99, rate, bad) in service_figures[n].items():
            print(f"{n:>7}  {'service ' + name:<18}{p50:>9.2f}{p99:>9.2f}{rate:>9.0f}{bad:>13}"
                  f"{p50 - floor50:>+9.2f}{p99 - floor99:>+9.2f}{rate / slowest:>16.2f}{rate / composed:>12.2f}")


def measure(workdir: str, target: str, spec, lines, clients, total, title: str, log_dir: str) -> None:
    db = os.path.join(workdir, "milvus.db")
    part_figures, expected = parts(db, target, spec, lines, clients, total)
    svc = Service(workdir, target, os.path.join(log_dir, f"service-{len(os.listdir(log_dir))}.log"))
    try:
        service_figures = service_load(svc, lines, expected, clients, total)
    finally:
        svc.stop()
    report(title, part_figures, service_figures, svc.start_seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(HERE, "runs", "demo"))
    p.add_argument("--requests", type=int, default=480, help="requests per measurement")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--users", type=int, default=200, help="distinct users (eval log lines), cycled")
    p.add_argument("--big", type=int, default=100_000, help="posts of the grown catalog (0: skip it)")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    spec = load_spec()
    base = os.path.join(args.workdir, "serving", "dssm")
    if not os.path.isdir(base) or not os.path.exists(os.path.join(args.workdir, "milvus.db")):
        raise SystemExit(f"no pushed model or milvus.db in {args.workdir}: run `make demo` first")
    lines = read_log_lines(os.path.join(HERE, "data", "sample", "eval.tsv"), args.users, spec)
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "run")
        os.makedirs(work)
        shutil.copy(os.path.join(args.workdir, "milvus.db"), os.path.join(work, "milvus.db"))
        os.symlink(os.path.abspath(os.path.join(args.workdir, "serving")), os.path.join(work, "serving"))
        model, port = spawn(["--model_name", "dssm", "--model_base_path", base], os.path.join(tmp, "model.log"), 180)
        target = f"127.0.0.1:{port}"
        try:
            print(f"{os.cpu_count()} CPUs; k={K}; {args.requests} requests per row; {len(lines)} users of "
                  f"data/sample/eval.tsv; model server {target} (this project's), Milvus Lite")
            measure(work, target, spec, lines, clients, args.requests, "demo catalog", tmp)
            if args.big:
                t = time.perf_counter()
                grown = grow_catalog(os.path.join(work, "milvus.db"), target, spec, args.big)
                print(f"\ncatalog grown to {grown['count']:,} posts (new generation {grown['collection']}) in "
                      f"{time.perf_counter() - t:.0f} s")
                measure(work, target, spec, lines, clients, args.requests, f"{args.big:,}-post catalog", tmp)
        finally:
            model.terminate()
            model.wait(30)


if __name__ == "__main__":
    main()
