"""Issue [fresh-items]: posts published after training, embedded by their content, added to the item
store and the serving generation without retraining; reads of new posts move the user.

Real Milvus Lite (a copy of the shared sample run's file, so the shared run stays as it was) and the
real pushed model; every expected ranking is worked out here with numpy over the model's own towers.
"""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, holding_the_shared_run

USER = {"client_id": "u7", "client_type": 1, "follow_topic_id": ["3", "8"], "read_post_id": ["p1", "p2", "p3"]}


@pytest.fixture(scope="module")
def fresh_run(runs, tmp_path_factory):
    """(a work directory with the shared run's pushed model and a copy of its Milvus Lite file,
    the pushed version)."""
    workdir, first, _ = runs
    tmp = tmp_path_factory.mktemp("fresh")
    with holding_the_shared_run(tmp_path_factory):  # nobody holds the Lite file while it is copied
        shutil.copy(os.path.join(workdir, "milvus.db"), tmp / "milvus.db")
    os.symlink(os.path.join(workdir, "serving"), tmp / "serving")
    return str(tmp), int(first["pushed_models"][0]["version"])


@pytest.fixture()
def parts(fresh_run):
    """(index, store, in-process towers, example builder, spec) over the copied file; the Lite server
    of this process is released after, so that a CLI test can open the file."""
    from milvus_lite.server_manager import server_manager_instance

    from retrieval.backends import open_index
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.recall import SavedModelTowers
    from schema.spec import load_spec
    from serving.examples import ExampleBuilder

    workdir, _ = fresh_run
    config = IndexConfig(uri=os.path.join(workdir, "milvus.db"))
    spec = load_spec()
    index = open_index(config)
    store = ItemStore(config, spec.item_id, client=index.client)
    towers = SavedModelTowers(os.path.join(workdir, "serving", "dssm"))
    yield index, store, towers, ExampleBuilder(spec, store), spec
    index.close()
    server_manager_instance.release_server(config.uri)


@pytest.fixture()
def vocabulary(fresh_run):
    from retrieval.catalog import ModelVocabulary
    from schema.spec import load_spec

    workdir, _ = fresh_run
    return ModelVocabulary(os.path.join(workdir, "serving", "dssm"), load_spec())


def _trained_ids() -> set[str]:
    """By hand: every post id of the sample's training log (post_id and read_post_id): what the sample
    run's Transform put in the item-id vocabulary."""
    import csv

    ids = set()
    with open(os.path.join(REPO, "data", "sample", "train.tsv")) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            ids.add(row["post_id"])
            ids.update(p for p in row["read_post_id"].split(",") if p)
    return ids


def _batch(ids, topics, vectors):
    from retrieval.index import Batch

    return Batch(list(ids), {"topic_id": list(topics)}, np.asarray(vectors, np.float32))


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ranking(index, store, towers, builder, spec, user_features, version):
    """By hand: every stored post through the item tower, the user through the user tower, cosine
    (numpy), the user's read posts left out: (ids best first, {id: score})."""
    from retrieval.catalog import item_examples

    posts = list(store.scan())
    ids = [i for b in posts for i in b.ids]
    items = np.concatenate([towers.item(item_examples(builder, spec, b), version) for b in posts])
    user = towers([builder.from_features(user_features)], version)[0]
    scores = _unit(items) @ _unit(user)
    read = set(user_features.get("read_post_id", []))
    order = [ids[i] for i in np.argsort(-scores, kind="stable") if ids[i] not in read]
    return order, dict(zip(ids, scores.tolist(), strict=True)), posts


def test_a_fresh_post_like_what_the_user_likes_is_recalled_at_the_rank_numpy_gives(parts, vocabulary):
    """Two posts the run never saw: one with the content and topic of the warm post the model ranks first
    for the user, one with the opposite vector. The first is recalled among the top (its id is unknown,
    its content is what the user likes), the second is not in the top 50; recall's answer equals the
    numpy ranking of every stored post."""
    from retrieval.catalog import add_posts
    from retrieval.recall import Recaller

    index, store, towers, builder, spec = parts
    generation, version = index.generation(refresh=True)
    assert store.vectors(USER["read_post_id"]).any(axis=1).all()  # the sample's posts: seeded by the run
    order, _, posts = _ranking(index, store, towers, builder, spec, USER, version)
    best = order[0]
    content = {i: (v, t) for b in posts for i, v, t in zip(b.ids, b.vectors, b.scalars["topic_id"], strict=True)}
    like, topic = content[best]
    added = add_posts(index, store, towers.item, vocabulary, builder, spec,
                      _batch(["fresh-like", "fresh-unlike"], [topic, topic], [like, -like]))
    assert added["added"] == 2 and added["generation"] == generation and added["model_version"] == version

    order, scores, _ = _ranking(index, store, towers, builder, spec, USER, version)
    assert order.index("fresh-like") < 5 and "fresh-unlike" not in order[:50]
    (hits,) = Recaller(towers, index, spec, store).recall([USER], k=20)
    assert [h["id"] for h in hits] == order[:20]
    np.testing.assert_allclose([h["score"] for h in hits], [scores[i] for i in order[:20]], atol=1e-4)


def test_reads_of_fresh_posts_move_the_user(parts, vocabulary):
    """Two users who read different new posts get different vectors, each the user tower's answer for
    the read posts' vectors given by hand in the request."""
    from retrieval.catalog import add_posts

    index, store, towers, builder, spec = parts
    _, version = index.generation(refresh=True)
    a_vec, b_vec = store.vectors(["p5"])[0], store.vectors(["p9"])[0]
    add_posts(index, store, towers.item, vocabulary, builder, spec,
              _batch(["fresh-a", "fresh-b"], ["3", "5"], [a_vec, b_vec]))
    reader_a = towers([builder.from_features({"client_id": "x", "client_type": 0, "read_post_id": ["fresh-a"]})],
                      version)[0]
    reader_b = towers([builder.from_features({"client_id": "x", "client_type": 0, "read_post_id": ["fresh-b"]})],
                      version)[0]
    assert float(_unit(reader_a) @ _unit(reader_b)) < 0.999

    by_hand = tf.train.Example()
    by_hand.features.feature["client_id"].bytes_list.value.append(b"x")
    by_hand.features.feature["client_type"].int64_list.value.append(0)
    by_hand.features.feature["read_post_id"].bytes_list.value.append(b"fresh-a")
    by_hand.features.feature["client_embed"].float_list.value.extend(a_vec.tolist())
    np.testing.assert_allclose(reader_a, towers([by_hand.SerializeToString()], version)[0], rtol=1e-5, atol=1e-6)


def test_re_adding_a_post_replaces_its_row(parts, vocabulary):
    from retrieval.catalog import add_posts, item_examples

    index, store, towers, builder, spec = parts
    generation, version = index.generation(refresh=True)
    first, second = store.vectors(["p11"])[0], store.vectors(["p12"])[0]
    add_posts(index, store, towers.item, vocabulary, builder, spec, _batch(["fresh-x"], ["3"], [first]))
    count = store.count()
    add_posts(index, store, towers.item, vocabulary, builder, spec, _batch(["fresh-x"], ["7"], [second]))
    assert store.count() == count
    rows = index.client.query(generation, filter='post_id == "fresh-x"', output_fields=["topic_id", "embedding"])
    assert len(rows) == 1 and rows[0]["topic_id"] == "7"
    want = towers.item(item_examples(builder, spec, _batch(["fresh-x"], ["7"], [second])), version)[0]
    np.testing.assert_allclose(rows[0]["embedding"], _unit(want), atol=1e-5)
    np.testing.assert_allclose(store.get(["fresh-x"])["fresh-x"]["vector"], second)


def test_a_model_version_the_tower_cannot_give_is_refused_before_anything_is_written(parts, vocabulary, tmp_path):
    """The generation was filled by version V: add_items with a model path that lacks V refuses, and
    neither the store nor the generation gets the post (user and item vectors stay of one version)."""
    from retrieval.catalog import add_posts
    from retrieval.recall import SavedModelTowers

    index, store, towers, builder, spec = parts
    generation, version = index.generation(refresh=True)
    other = tmp_path / "dssm"
    other.mkdir()
    os.symlink(towers.path, other / str(version + 1))
    with pytest.raises(ValueError, match=f"filled by model version {version}, which is not under"):
        add_posts(index, store, SavedModelTowers(str(other)).item, vocabulary, builder, spec,
                  _batch(["fresh-refused"], ["3"], [store.vectors(["p1"])[0]]))
    assert store.get(["fresh-refused"]) == {}
    assert index.holds(generation, ["fresh-refused"]) == set()


def test_a_post_added_while_a_new_generation_is_written_ends_up_in_it(parts, vocabulary):
    """A new generation (ItemIndexer's path) reads the store, and while its vectors are computed a post
    is added to the serving generation: once the new one is live, it holds the post too."""
    from retrieval.catalog import add_posts, index_store

    index, store, towers, builder, spec = parts
    old, version = index.generation(refresh=True)
    calls, scanned, added = [0], threading.Event(), threading.Event()

    def slow_item_tower(examples, v):
        calls[0] += 1
        if calls[0] == 2:  # the generation's scan has read the store: add a post now
            scanned.set()
            assert added.wait(120)
        return towers.item(examples, v)

    result = {}
    writer = threading.Thread(target=lambda: result.update(index_store(index, store, slow_item_tower, vocabulary,
                                                                       builder, spec, version)))
    writer.start()
    assert scanned.wait(120)
    during = add_posts(index, store, towers.item, vocabulary, builder, spec,
                       _batch(["fresh-race"], ["3"], [store.vectors(["p2"])[0]]))
    added.set()
    writer.join(300)
    assert during["generation"] == old  # the alias had not moved yet
    new = result["collection"]
    assert index.generation(refresh=True)[0] == new != old
    assert result["added_during_write"] >= 1
    assert index.holds(new, ["fresh-race"]) == {"fresh-race"}
    assert result["count"] == store.count() - 1  # the generation's scan did not see it: the catch-up added it


def test_the_cli_adds_good_rows_and_reports_each_bad_row_with_its_line(fresh_run, tmp_path):
    """add_items on a file with a good row, a vector of the wrong size, a line that is not JSON and an
    unknown key: exit 2, each bad row named by its line, the good post searchable, nothing of the
    bad ones written."""
    workdir, _ = fresh_run
    dim = 32
    good = {"post_id": "fresh-cli", "values": [0.1] * dim, "topic_id": "3"}
    lines = [json.dumps(good), json.dumps({"post_id": "bad-size", "values": [0.1] * 5}), "{not json",
             json.dumps({"post_id": "bad-key", "values": [0.1] * dim, "colour": "red"}),
             json.dumps({"post_id": "bad-zero", "values": [0.0] * dim}),
             json.dumps({"post_id": "bad-long", "values": [0] * 40_000})]  # 120 KB: over 32 x 32 + 64 KiB
    items = tmp_path / "posts.jsonl"
    items.write_text("\n".join(lines) + "\n")
    run = subprocess.run([sys.executable, "-m", "retrieval.add_items", "--workdir", workdir, "--items", str(items)],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert run.returncode == 2, run.stderr
    for line, reason in ((2, "values must be a list of 32 numbers"), (3, "not JSON"), (4, "unknown key(s) ['colour']"),
                         (5, "an all-zero vector"),
                         (6, "a line of 120,036 bytes, longer than a post of the store's size needs (66,560)")):
        assert f"posts.jsonl:{line}: refused: {reason}" in run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["added"] == 1 and result["refused"] == 5

    from milvus_lite.server_manager import server_manager_instance

    from retrieval.backends import open_index
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore

    config = IndexConfig(uri=os.path.join(workdir, "milvus.db"))
    with open_index(config) as index:
        store = ItemStore(config, "post_id", client=index.client)
        generation, _ = index.generation(refresh=True)
        assert set(store.get(["fresh-cli", "bad-size", "bad-key", "bad-zero", "bad-long"])) == {"fresh-cli"}
        assert index.holds(generation, ["fresh-cli", "bad-size", "bad-key", "bad-zero"]) == {"fresh-cli"}
    server_manager_instance.release_server(config.uri)


def test_the_watched_folder_adds_each_file_and_keeps_the_refused_lines(fresh_run, tmp_path):
    """The streaming path: files renamed into the folder are added by the same code as --items; a file
    with a refused row goes to refused/ with each refused line and why beside it."""
    import time

    workdir, _ = fresh_run
    folder = tmp_path / "incoming"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.add_items", "--workdir", workdir, "--watch", str(folder),
                             "--poll-seconds", "0.2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    try:
        files = (("one.jsonl", [{"post_id": "w-1", "values": [0.2] * 32, "topic_id": "3"}]),
                 ("two.jsonl", [{"post_id": "w-2", "values": [0.3] * 32}, {"post_id": "w-bad", "values": [1]}]))
        for name, rows in files:
            (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp_path / name, folder / name)
        deadline = time.monotonic() + 240
        while not (folder / "refused" / "two.jsonl").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert (folder / "added" / "one.jsonl").exists() and (folder / "refused" / "two.jsonl").exists(), err
    assert (folder / "refused" / "two.jsonl.refused.txt").read_text() == (
        "2: values must be a list of 32 numbers (the item store's vectors), got 1 values\n")
    results = {r["file"]: r for r in map(json.loads, out.splitlines())}
    assert (results["one.jsonl"]["added"], results["two.jsonl"]["added"], results["two.jsonl"]["refused"]) == (1, 1, 1)


def test_the_generation_marks_which_posts_the_model_knows(parts, vocabulary):
    """Every post of the serving generation carries model_knows: "1" exactly for the posts of the
    training log (counted here from the log itself), "0" for the others, a post added now among them."""
    from retrieval.catalog import KNOWN_FIELD, add_posts

    index, store, towers, builder, spec = parts
    generation, _ = index.generation(refresh=True)
    add_posts(index, store, towers.item, vocabulary, builder, spec, _batch(["fresh-marked"], ["3"],
                                                                          [store.vectors(["p4"])[0]]))
    rows = index.client.query(generation, filter="", output_fields=["post_id", KNOWN_FIELD], limit=16384)
    flags = {r["post_id"]: r[KNOWN_FIELD] for r in rows}
    trained = _trained_ids()
    assert flags["fresh-marked"] == "0" and flags["p1"] == "1"
    assert {p for p, f in flags.items() if f == "1"} == trained & set(flags)
    assert {p for p, f in flags.items() if f == "0"} == set(flags) - trained


def test_new_posts_keeps_places_for_the_best_posts_the_model_does_not_know(parts, vocabulary):
    """k 12 with new_posts 6: the six best-scored posts outside the training log (numpy over every
    stored post; other tests may have added some) are in the answer wherever they rank, the other
    places go to the top of the whole ranking, the hits ordered by score; new_posts 0 is the plain top 12."""
    from retrieval.catalog import add_posts
    from retrieval.recall import Recaller

    index, store, towers, builder, spec = parts
    _, version = index.generation(refresh=True)
    order, _, posts = _ranking(index, store, towers, builder, spec, USER, version)
    # two new posts like the user's 30th and 40th post
    content = {i: (v, t) for b in posts for i, v, t in zip(b.ids, b.vectors, b.scalars["topic_id"], strict=True)}
    picks = [content[order[29]], content[order[39]]]
    add_posts(index, store, towers.item, vocabulary, builder, spec,
              _batch(["fresh-30", "fresh-40"], [t for _, t in picks], [v for v, _ in picks]))
    order, scores, _ = _ranking(index, store, towers, builder, spec, USER, version)
    new = [p for p in order if p not in _trained_ids()]
    recaller = Recaller(towers, index, spec, store)
    query, read = [builder.from_features(USER)], [set(USER["read_post_id"])]
    (plain,) = recaller.recall_examples(query, 12, read=read)
    assert [h["id"] for h in plain] == order[:12]
    (hits,) = recaller.answer(query, 12, read=read, new_posts=6)["hits"]
    want = sorted(new[:6] + [p for p in order if p not in new[:6]][:6], key=lambda p: -scores[p])
    assert [h["id"] for h in hits] == want
    assert set(want) != set(order[:12])  # the reserve changed the answer: the test can fail
    with pytest.raises(ValueError, match="new_posts must be an integer from 0 to k"):
        recaller.answer(query, 12, new_posts=13)
