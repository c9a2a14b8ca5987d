"""The item index on a real Milvus server (standalone 2.3, started by the test), as users run it once
they outgrow Milvus Lite: real aliases, HNSW and IVF with their search parameters, sealed segments.
Expected rankings come from numpy brute force on the same vectors."""
import json
import threading
import time

import numpy as np
import pytest

from retrieval.milvus import (
    Batch,
    IndexConfig,
    ItemIndexError,
    MilvusIndex,
    _ServerAlias,
    connect,
    generations,
    normalise,
    write_generation,
)
from tests.conftest import REPO
from tests.milvus_server import milvus_server, unavailable_reason

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]

DIM = 32


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    with milvus_server(tmp_path_factory.mktemp("milvus-server")) as u:
        yield u


def _items(n, seed, prefix="p", clusters=0):
    rng = np.random.default_rng(seed)
    if clusters:  # clustered vectors, as item embeddings are: harder for an approximate index than noise
        centers = rng.normal(size=(clusters, DIM))
        vectors = centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, DIM))
    else:
        vectors = rng.normal(size=(n, DIM))
    return [f"{prefix}{i}" for i in range(n)], [f"t{i % 5}" for i in range(n)], vectors.astype(np.float32)


def _batches(ids, topics, vectors, size=2000):
    for s in range(0, len(ids), size):
        yield Batch(ids[s:s + size], {"topic_id": topics[s:s + size]}, vectors[s:s + size])


def _config(uri, alias, **kw):
    return IndexConfig(uri=uri, alias=alias, **{"index_type": "FLAT", "index_params": {}, "search_params": {}, **kw})


def _truth(queries, vectors, ids, k):
    scores = normalise(queries) @ normalise(vectors).T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def test_aliases_are_created_altered_described_and_survive_a_dropped_collection(uri):
    client = connect(_config(uri, "al"))
    alias = _ServerAlias(client, "al")
    for name in ("al_a", "al_b"):
        _ = write_generation(_config(uri, "tmp_" + name), _batches(*_items(50, 1)), "post_id", ["topic_id"], DIM,
                             client=client)
    a, b = generations(client, "tmp_al_a")[0], generations(client, "tmp_al_b")[0]
    assert alias.get() is None
    alias.point_to(a)  # created
    assert alias.get() == a == client.describe_alias("al")["collection_name"]
    alias.point_to(b)  # altered
    assert alias.get() == b
    # Dropping the collection leaves the alias behind on Milvus 2.3: it can be neither described nor
    # created again, only altered (why point_to alters first).
    client.drop_collection(b)
    alias.point_to(a)
    assert alias.get() == a
    client.close()


def test_flat_top_k_equals_brute_force(uri):
    ids, topics, vectors = _items(3000, 2)
    config = _config(uri, "flat")
    write_generation(config, _batches(ids, topics, vectors), "post_id", ["topic_id"], DIM)
    queries = np.random.default_rng(3).normal(size=(10, DIM)).astype(np.float32)
    hits = MilvusIndex(config).search(queries, 20)
    assert [[h["id"] for h in row] for row in hits] == _truth(queries, vectors, ids, 20)


@pytest.mark.parametrize("index_type,index_params,search_params", [
    ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": 400}),
    ("IVF_FLAT", {"nlist": 128}, {"nprobe": 32}),
])
def test_approximate_indexes_reach_recall_098_at_10k_items(uri, index_type, index_params, search_params):
    ids, topics, vectors = _items(10_000, 4, clusters=100)
    config = _config(uri, index_type.lower(), index_type=index_type, index_params=index_params,
                     search_params=search_params)
    done = write_generation(config, _batches(ids, topics, vectors), "post_id", ["topic_id"], DIM)
    assert done["index_type"] == index_type and done["count"] == 10_000
    queries = np.random.default_rng(5).normal(size=(50, DIM)).astype(np.float32)
    hits = MilvusIndex(config).search(queries, 100)
    truth = _truth(queries, vectors, ids, 100)
    recall = np.mean([len({h["id"] for h in row} & set(t)) / 100 for row, t in zip(hits, truth, strict=True)])
    assert recall >= 0.98, recall


def test_keep_generations_and_a_failure_half_way_leaves_the_previous_generation_serving(uri):
    config = _config(uri, "gens", keep_generations=2)
    client = connect(config)
    names = [write_generation(config, _batches(*_items(200, s, prefix=f"g{s}_")), "post_id", ["topic_id"], DIM,
                              client=client)["collection"] for s in range(3)]
    assert generations(client, "gens") == names[1:]
    assert MilvusIndex(config, client=client).generation()[0] == names[2]  # the alias, resolved
    assert client.describe_alias("gens")["collection_name"] == names[2]

    def broken():
        ids, topics, vectors = _items(200, 9, prefix="bad")
        yield Batch(ids[:100], {"topic_id": topics[:100]}, vectors[:100])
        raise OSError("the embeddings file ends here")

    with pytest.raises((ItemIndexError, OSError)):
        write_generation(config, broken(), "post_id", ["topic_id"], DIM, client=client)
    assert generations(client, "gens") == names[1:]  # the partial generation is dropped
    assert client.describe_alias("gens")["collection_name"] == names[2]
    (hits,) = MilvusIndex(config, client=client).search(_items(200, 2, prefix="g2_")[2][:1], 3)
    assert hits[0]["id"] == "g2_0"
    client.close()


def test_the_alias_moves_under_concurrent_queries_with_no_failed_or_empty_answer(uri):
    config = _config(uri, "moving", keep_generations=3)
    write_generation(config, _batches(*_items(1000, 11, prefix="a")), "post_id", ["topic_id"], DIM)
    answers, failures, stop = [], [], threading.Event()
    queries = np.random.default_rng(12).normal(size=(4, DIM)).astype(np.float32)

    def query():
        item_index = MilvusIndex(config)
        while not stop.is_set():
            try:
                rows = item_index.search(queries, 10)
                answers.append(all(len(r) == 10 for r in rows))
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(repr(e))

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    for s, prefix in ((13, "b"), (14, "c")):
        write_generation(config, _batches(*_items(1000, s, prefix=prefix)), "post_id", ["topic_id"], DIM)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert answers and all(answers), f"{answers.count(False)} empty or short answers of {len(answers)}"
    (hits,) = MilvusIndex(config).search(queries[:1], 5)
    assert all(h["id"].startswith("c") for h in hits)


def test_the_pipeline_indexes_into_the_server(uri, runs, tmp_path, tmp_path_factory):
    """The shared sample run again with milvus.uri pointing at the server: everything is reused from
    the cache but ItemIndexer (its Milvus settings changed), which indexes the blessed model there."""
    from tests.conftest import holding_the_shared_run, run_local

    workdir, first, _ = runs
    (tmp_path / "config.yaml").write_text(f"milvus: {{uri: '{uri}', alias: e2e_items, index_type: HNSW, "
                                          "index_params: {M: 16, efConstruction: 100}, search_params: {ef: 200}}\n")
    with holding_the_shared_run(tmp_path_factory):
        summary = run_local(workdir, "--config", str(tmp_path / "config.yaml"), "--no-serving-demo")
    states = {c["component"]: c["state"] for c in summary["components"]}
    assert states["Trainer"] == "CACHED" and states["ItemIndexer"] == "COMPLETE"
    index = summary["item_index"]
    assert index["count"] == 1477 and index["index_type"] == "HNSW"
    client = connect(_config(uri, "e2e_items"))
    assert client.describe_alias("e2e_items")["collection_name"] == index["collection"]
    assert client.get_collection_stats(index["collection"])["row_count"] == 1477
    # The server holds the item tower's vectors of the first run (same model, same items): read from
    # that run's ItemIndexer shards, not its Milvus Lite file (Lite serves one process per file).
    import glob
    import os

    from components.item_indexer import EMBEDDINGS_DIR, read_embeddings
    from schema.spec import load_spec

    pattern = os.path.join(first["item_index_uri"], EMBEDDINGS_DIR, "*")
    assert glob.glob(pattern)
    written = {}
    for batch in read_embeddings(pattern, load_spec(), index["dim"]):
        written.update({i: v for i, v in zip(batch.ids, normalise(batch.vectors), strict=True) if i in ("p5", "p50")})
    rows = client.query(index["collection"], filter='post_id in ["p5", "p50"]', output_fields=["post_id", "embedding"])
    assert len(rows) == 2 and all(np.allclose(r["embedding"], written[r["post_id"]], atol=1e-5) for r in rows)
    client.close()


def test_two_recall_service_replicas_share_the_server(uri, runs, tmp_path):
    """After the test above (the shared run indexed into the server under e2e_items): two replicas of
    the recall service on the one server answer the same hits, and a post added through one is
    recalled through the other at once. (Milvus Lite holds its file in one process; a server is how
    replicas scale.)"""
    import os

    from serving.server import spawn
    from tests.retrieval.test_recall_service import USER, Service

    workdir, _, _ = runs
    model, port = spawn(["--model_name", "dssm", "--model_base_path", os.path.join(workdir, "serving", "dssm")],
                        str(tmp_path / "model.log"), timeout=120)
    os.symlink(os.path.join(workdir, "serving"), tmp_path / "serving")  # the run's pushed files: its vocabulary
    flags = ["--milvus", uri, "--alias", "e2e_items", "--model_target", f"127.0.0.1:{port}"]
    replicas = [Service(str(tmp_path), str(tmp_path / f"service-{n}.log"), *flags) for n in (1, 2)]
    try:
        answers = [r.rest("POST", "/v1/recall", {"features": USER, "k": 20}) for r in replicas]
        assert [a[0] for a in answers] == [200, 200], answers
        assert answers[0][1] == answers[1][1] and len(answers[0][1]["hits"]) == 20
        _, status = replicas[0].rest("GET", "/v1/status")
        assert status["item_store"]["count"] == 1477 and status["item_count"] == 1477
        top = answers[0][1]["hits"][0]
        vector = next(json.loads(line)["values"] for line in open(os.path.join(REPO, "data", "sample",
                                                                              "item_vectors.jsonl"))
                      if json.loads(line)["post_id"] == top["id"])
        added = replicas[0].rest("POST", "/v1/items", [{"post_id": "replica-new", "values": vector,
                                                        "topic_id": top["topic_id"]}])
        assert added[0] == 200 and added[1]["added"] == 1, added
        _, other = replicas[1].rest("POST", "/v1/recall", {"features": USER, "k": 2000})
        assert "replica-new" in {h["id"] for h in other["hits"]}
        assert replicas[1].rest("GET", "/v1/status")[1]["item_count"] == 1478
    finally:
        for r in replicas:
            r.stop()
        model.kill()
        model.wait()
