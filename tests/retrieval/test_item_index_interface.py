"""The ItemIndex interface (retrieval/index.py), the same tests on each back end retrieval/backends.py
opens: Milvus Lite (a file) and NumpyIndex (memory://). Expected answers come from numpy brute force
over the vectors written, worked out here, not from either back end."""
import uuid

import numpy as np
import pytest

from retrieval.backends import local_files, nothing_indexed_yet, open_index
from retrieval.index import Batch, GenerationGone, IndexConfig, ItemIndexError

DIM = 8


@pytest.fixture(params=["milvus-lite", "numpy"])
def config(request, tmp_path):
    uri = str(tmp_path / "milvus.db") if request.param == "milvus-lite" else f"memory://{uuid.uuid4().hex}"
    return IndexConfig(uri=uri, alias="items", keep_generations=2, insert_batch=64, insert_threads=2)


def _items(n, seed, prefix="p"):
    rng = np.random.default_rng(seed)
    return [f"{prefix}{i}" for i in range(n)], [f"t{i % 4}" for i in range(n)], \
        rng.normal(size=(n, DIM)).astype(np.float32)


def _batches(ids, topics, vectors, size=100):
    return [Batch(ids[s:s + size], {"topic_id": topics[s:s + size]}, vectors[s:s + size])
            for s in range(0, len(ids), size)]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_no_generation_yet_is_an_error_that_says_so(config):
    with open_index(config) as index:
        with pytest.raises(ItemIndexError, match="run the pipeline"):
            index.generation()


def test_top_k_exclusions_and_filters_equal_numpy(config):
    ids, topics, vectors = _items(400, 1)
    queries = np.random.default_rng(2).normal(size=(3, DIM)).astype(np.float32)
    with open_index(config) as index:
        done = index.write_generation(_batches(ids, topics, vectors), "post_id", ["topic_id"], DIM, model_version=7)
        assert done["count"] == 400 and done["previous"] is None
        scores = _unit(queries) @ _unit(vectors).T
        hits = index.search(queries, k=20, output_fields=["topic_id"])
        for q in range(3):
            best = np.argsort(-scores[q], kind="stable")[:20]
            assert [h["id"] for h in hits[q]] == [ids[i] for i in best]
            np.testing.assert_allclose([h["score"] for h in hits[q]], scores[q][best], atol=1e-5)
            assert [h["topic_id"] for h in hits[q]] == [topics[i] for i in best]
        excluded = {ids[i] for i in np.argsort(-scores[0])[:15]}
        (kept,) = index.search(queries[:1], k=20, exclude=[excluded], filters={"topic_id": ["t1", "t2"]})
        expected = [ids[i] for i in np.argsort(-scores[0], kind="stable")
                    if ids[i] not in excluded and topics[i] in ("t1", "t2")][:20]
        assert [h["id"] for h in kept] == expected
        with pytest.raises(ValueError, match="cannot filter on"):
            index.search(queries[:1], k=3, filters={"colour": ["red"]})
        with pytest.raises(ValueError, match="k must be an integer"):
            index.search(queries[:1], k=0)
        generation, version = index.generation()
        assert generation == done["collection"] and version == 7
        assert index.describe(generation).fields == frozenset({"post_id", "topic_id"})
        assert index.count(generation) == 400 and index.holds(generation, ["p3", "nope"]) == {"p3"}
        stored = {r["post_id"]: r for r in index.stored_items(generation, "post_id", limit=500)}
        assert len(stored) == 400 and stored["p5"]["topic_id"] == topics[5]
        np.testing.assert_allclose(stored["p5"]["vector"], _unit(vectors[5]), atol=1e-6)


def test_generations_move_the_alias_keep_two_and_remember_their_model_versions(config):
    with open_index(config) as index:
        made = [index.write_generation(_batches(*_items(50, s, prefix=f"g{s}-")), "post_id", ["topic_id"], DIM,
                                       model_version=100 + s) for s in range(3)]
        assert [m["previous"] for m in made] == [None, made[0]["collection"], made[1]["collection"]]
        assert made[2]["dropped"] == [made[0]["collection"]]
        assert index.generation() == (made[2]["collection"], 102)
        assert index.versions_in_use() == {101, 102}
        (hit,) = index.search(np.ones((1, DIM), np.float32), k=1)[0]
        assert hit["id"].startswith("g2-")
        with pytest.raises(GenerationGone):  # a generation read after it was dropped
            index.search(np.ones((1, DIM), np.float32), k=1, generation=made[0]["collection"])


def test_a_bad_batch_or_a_repeated_id_leaves_the_serving_generation_alone(config):
    ids, topics, vectors = _items(100, 3)
    with open_index(config) as index:
        first = index.write_generation(_batches(ids, topics, vectors), "post_id", ["topic_id"], DIM)
        bad = [*_batches(*_items(50, 4, prefix="x")), Batch(["y"], {"topic_id": ["t"]}, np.zeros((1, DIM + 1)))]
        with pytest.raises(ItemIndexError, match="shape"):
            index.write_generation(bad, "post_id", ["topic_id"], DIM)
        with pytest.raises(ItemIndexError, match="duplicate"):
            index.write_generation(_batches(ids + ids[:3], topics + topics[:3], np.vstack([vectors, vectors[:3]])),
                                   "post_id", ["topic_id"], DIM)
        assert index.generation()[0] == first["collection"]
        (hit,) = index.search(vectors[:1], k=1)[0]
        assert hit["id"] == "p0"


def test_upserts_add_and_replace_and_are_searchable_at_once(config):
    ids, topics, vectors = _items(60, 5)
    vectors[:, 0] = -np.abs(vectors[:, 0]) - 0.1  # every catalog item away from the probe below
    with open_index(config) as index:
        generation = index.write_generation(_batches(ids, topics, vectors), "post_id", ["topic_id"],
                                            DIM)["collection"]
        probe = np.zeros((1, DIM), np.float32)
        probe[0, 0] = 1.0
        spike = np.zeros((2, DIM), np.float32)
        spike[:, 0] = [5.0, 3.0]  # both point along the probe: cosine 1.0
        spike[1, 1] = 3.0         # p7 at 45 degrees: cosine 1/sqrt(2)
        assert index.upsert_items(generation, Batch(["new", "p7"], {"topic_id": ["t9", "t8"]}, spike)) == 2
        hits = index.search(probe, k=2, output_fields=["topic_id"])[0]
        assert [(h["id"], h["topic_id"]) for h in hits] == [("new", "t9"), ("p7", "t8")]
        np.testing.assert_allclose([h["score"] for h in hits], [1.0, 1 / np.sqrt(2)], atol=1e-5)
        assert index.count(generation) == 61 and index.holds(generation, ["new", "p7"]) == {"new", "p7"}


def test_what_callers_outside_retrieval_ask(config, tmp_path):
    lite = config.uri.endswith(".db")
    assert nothing_indexed_yet(config) is lite  # the Lite file is not there yet; memory cannot say
    assert local_files(config) == ({"Milvus Lite file": config.uri} if lite else {})
    assert local_files(IndexConfig(uri="http://milvus:19530")) == {}
