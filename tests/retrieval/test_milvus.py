"""Item index on the real Milvus Lite, checked against numpy brute force on the same vectors."""
import threading
import time

import numpy as np
import pytest

from retrieval.milvus import (
    Batch,
    IndexConfig,
    ItemIndexError,
    MilvusIndex,
    connect,
    generations,
    normalise,
    write_generation,
)

DIM = 16


def _items(n, seed, prefix="p"):
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    topics = [f"t{i % 5}" for i in range(n)]
    return ids, topics, rng.normal(size=(n, DIM)).astype(np.float32)


def _batches(ids, topics, vectors, size=300):
    for s in range(0, len(ids), size):
        yield Batch(ids[s:s + size], {"topic_id": topics[s:s + size]}, vectors[s:s + size])


@pytest.fixture()
def config(tmp_path):
    return IndexConfig(uri=str(tmp_path / "milvus.db"), alias="items", index_type="FLAT", index_params={},
                       search_params={}, insert_batch=128, insert_threads=4)


@pytest.fixture()
def client(config):
    c = connect(config)
    yield c
    c.close()


def test_ids_and_vectors_round_trip(config, client):
    ids, topics, vectors = _items(1000, 1)
    done = write_generation(config, _batches(ids, topics, vectors), "post_id", ["topic_id"], DIM, client=client)
    assert done["count"] == 1000 and done["previous"] is None
    rows = client.get(done["collection"], ids=["p0", "p517", "p999"], output_fields=["embedding", "topic_id"])
    got = {r["post_id"]: r for r in rows}
    expected = normalise(vectors)
    for i in (0, 517, 999):
        np.testing.assert_allclose(np.array(got[f"p{i}"]["embedding"], np.float32), expected[i], rtol=1e-6)
        assert got[f"p{i}"]["topic_id"] == topics[i]


def test_flat_top_k_equals_numpy_brute_force(config, client):
    ids, topics, vectors = _items(2000, 2)
    write_generation(config, _batches(ids, topics, vectors), "post_id", ["topic_id"], DIM, client=client)
    item_index = MilvusIndex(config, client=client)
    queries = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float32)
    scores = normalise(queries) @ normalise(vectors).T
    results = item_index.search(queries, k=50)
    for q in range(5):
        expected = np.argsort(-scores[q], kind="stable")[:50]
        assert [r["id"] for r in results[q]] == [ids[i] for i in expected]
        np.testing.assert_allclose([r["score"] for r in results[q]], scores[q][expected], atol=1e-5)

    # excluded ids never come back, and K results still do; a topic filter keeps only that topic
    excluded = {ids[i] for i in np.argsort(-scores[0])[:30]}
    (kept,) = item_index.search(queries[:1], k=50, exclude=[excluded])
    allowed = [i for i in np.argsort(-scores[0], kind="stable") if ids[i] not in excluded][:50]
    assert [r["id"] for r in kept] == [ids[i] for i in allowed]
    (topic,) = item_index.search(queries[:1], k=20, filters={"topic_id": ["t3", 'odd"topic']},
                               output_fields=["topic_id"])
    in_topic = [i for i in np.argsort(-scores[0], kind="stable") if topics[i] == "t3"][:20]
    assert [r["id"] for r in topic] == [ids[i] for i in in_topic] and {r["topic_id"] for r in topic} == {"t3"}
    with pytest.raises(ValueError, match="cannot filter on"):
        item_index.search(queries[:1], k=5, filters={"topic_id or 1": ["x"]})


def test_alias_moves_while_queries_run_and_old_generations_are_dropped(config, client):
    config = IndexConfig(**{**config.__dict__, "keep_generations": 2})
    first = _items(1500, 4, prefix="a")
    write_generation(config, _batches(*first), "post_id", ["topic_id"], DIM, client=client)
    item_index = MilvusIndex(config, client=client, refresh_seconds=0.05)
    query = np.ones((1, DIM), np.float32)
    seen, failures, stop = [], [], threading.Event()

    def ask():
        while not stop.is_set():
            try:
                (hits,) = item_index.search(query, k=10)
                seen.append({h["id"][0] for h in hits} if hits else set())
            except Exception as e:  # noqa: BLE001 - every failure is counted
                failures.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    second = write_generation(config, _batches(*_items(1500, 5, prefix="b")), "post_id", ["topic_id"], DIM,
                              client=client)
    time.sleep(0.5)
    third = write_generation(config, _batches(*_items(1500, 6, prefix="c")), "post_id", ["topic_id"], DIM,
                             client=client)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and seen and all(s in ({"a"}, {"b"}, {"c"}) for s in seen)  # never empty, never mixed
    assert seen[0] == {"a"} and seen[-1] == {"c"}
    assert second["previous"] and third["previous"] == second["collection"]
    assert generations(client, "items") == [second["collection"], third["collection"]]  # keep 2
    assert third["dropped"] and second["collection"] not in third["dropped"]


def test_a_failure_half_way_leaves_the_previous_index_serving(config, client):
    ids, topics, vectors = _items(500, 7)
    first = write_generation(config, _batches(ids, topics, vectors), "post_id", ["topic_id"], DIM, client=client)

    def broken():
        yield from _batches(*_items(400, 8, prefix="x"))
        yield Batch(["bad"], {"topic_id": ["t"]}, np.zeros((1, DIM + 1), np.float32))

    with pytest.raises(ItemIndexError, match="shape"):
        write_generation(config, broken(), "post_id", ["topic_id"], DIM, client=client)
    assert generations(client, "items") == [first["collection"]]  # the partial collection is gone
    (hits,) = MilvusIndex(config, client=client).search(vectors[:1], k=3)
    assert hits[0]["id"] == "p0"


def test_duplicate_ids_fail_the_generation(config, client):
    ids, topics, vectors = _items(300, 9)
    with pytest.raises(ItemIndexError, match="duplicate"):
        write_generation(config, _batches(ids + ids[:10], topics + topics[:10], np.vstack([vectors, vectors[:10]])),
                         "post_id", ["topic_id"], DIM, client=client)
    assert generations(client, "items") == []


def test_lite_refuses_index_types_it_cannot_build(tmp_path):
    with pytest.raises(ValueError, match="Milvus Lite builds FLAT, IVF_FLAT, AUTOINDEX only"):
        IndexConfig(uri=str(tmp_path / "m.db"), index_type="HNSW").validate()
    IndexConfig(uri="http://milvus:19530", index_type="HNSW").validate()  # passed through to a server
