"""The whole pipeline on the bundled sample with LocalDagRunner, then checks on what it produced."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from model.config import TrainerConfig
from tests.conftest import REPO, executions_by_node, holding_the_shared_run, run_local

pytestmark = pytest.mark.e2e

COMPONENTS = {"TsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
              "item_vectors_importer", "Transform", "TransformedStatisticsGen", "Trainer", "RetrievalEvaluator",
              "ServingInfraValidator", "TowerPusher", "ItemIndexer"}


def test_each_component_ran_once_and_the_rerun_is_cached(runs):
    workdir, first, second = runs
    assert {c["component"] for c in first["components"]} == COMPONENTS
    assert all(c["state"] == "COMPLETE" for c in first["components"]), first["components"]
    assert {c["component"] for c in second["components"]} == COMPONENTS
    assert all(c["state"] == "CACHED" for c in second["components"]), second["components"]
    by_node = executions_by_node(os.path.join(workdir, "metadata.sqlite"))
    complete = "COMPLETE"
    for node in COMPONENTS:
        states = by_node[node]
        assert states.count(complete) == 1, (node, states)
    assert second["pushed_models"] == first["pushed_models"]
    assert sorted(os.listdir(os.path.join(workdir, "serving"))) == ["dssm", "dssm_item", "dssm_user", "models.config"]
    assert len(os.listdir(os.path.join(workdir, "serving", "dssm"))) == 1


def test_summary_counts_and_quality(runs):
    _, first, _ = runs
    # data/sample was generated with 8,000 training and 2,000 eval rows, none of them bad.
    assert first["splits"]["train"]["read"] == 8000
    assert first["splits"]["eval"]["read"] == 2000
    for split in first["splits"].values():
        assert split["read"] == split["written"] + split["rejected"]
        assert split["rejected"] == 0
    # Vocabularies come from the training split, so no training id is out of vocabulary.
    assert first["oov_ids"]["train"] == {"topic_id": 0, "client_type": 0, "post_id": 0}
    assert set(first["oov_ids"]["eval"]) == {"topic_id", "client_type", "post_id"}
    training, planned = first["training"], TrainerConfig()
    # train_steps is an upper bound: early stopping ends sooner when the eval loss stops improving,
    # and the model kept is the one of best_step (the eval split's lowest loss).
    assert training["train_steps"] <= planned.train_steps
    assert training["stopped_early"] == (training["train_steps"] < planned.train_steps)
    assert 0 < training["best_step"] <= training["train_steps"]
    # The first check at half a pass: ceil(8000 / 2 / 128) = 32 steps, down to a multiple of the 10
    # steps one call of the compiled step runs.
    assert planned.eval_every_steps == 0 and training["eval_every_steps"] == 30
    assert training["best_step"] % 30 == 0 or training["best_step"] == training["train_steps"]
    assert training["train_rows"] == 8000
    assert training["planned_passes"] == round(planned.train_steps * planned.batch_size / 8000, 2)
    assert training["passes"] == round(training["train_steps"] * planned.batch_size / 8000, 2)
    # 48 passes planned, but early stopping ends it: the warning only when the passes made exceed 20.
    assert any("passes over 8,000 training rows" in w for w in training["warnings"]) == (training["passes"] > 20)
    assert training["eval_auc"] >= 0.70, training
    assert np.isfinite(first["training"]["eval_loss"])
    retrieval = first["retrieval"]
    assert retrieval["blessed"] and first["pushed"]
    low, high = retrieval["lift_ci"]
    assert 0 < low <= retrieval["lift"] <= high and retrieval["users"] >= 200
    assert retrieval["model"]["recall@50"] > retrieval["popularity"]["recall@50"]
    for k in (10, 50, 100):
        assert 0 <= retrieval["model"][f"recall@{k}"] <= retrieval["model"][f"hit_rate@{k}"] <= 1
    assert retrieval["model"]["recall@10"] <= retrieval["model"]["recall@50"] <= retrieval["model"]["recall@100"]


def _sample_vectors() -> dict[str, list[float]]:
    with open(os.path.join(REPO, "data", "sample", "item_vectors.jsonl")) as f:
        return {(o := json.loads(line))["post_id"]: o["values"] for line in f if line.strip()}


VECTORS = _sample_vectors()


def _example(**features):
    """A tf.Example as a client sends it: the features, and the posts' content vectors by value from
    the sample's vector file (the post's own when known; one per read post, zeros when unknown)."""
    ex = tf.train.Example()
    if features.get("post_id", [None])[0] in VECTORS:
        ex.features.feature["item_embed"].float_list.value.extend(VECTORS[features["post_id"][0]])
    if "read_post_id" in features:
        dim = len(next(iter(VECTORS.values())))
        ex.features.feature["client_embed"].float_list.value.extend(
            v for p in features["read_post_id"] for v in VECTORS.get(p, [0.0] * dim))
    for key, values in features.items():
        f = ex.features.feature[key]
        if isinstance(values[0], int):
            f.int64_list.value.extend(values)
        elif isinstance(values[0], float):
            f.float_list.value.extend(values)
        else:
            f.bytes_list.value.extend(v.encode() for v in values)
    return ex.SerializeToString()


USER = {"client_id": ["u7"], "client_type": [1], "follow_topic_id": ["3", "8"],
        "all_topic_fav_7": ["3", "11"], "all_topic_fav_7_weight": [0.7, 0.3], "read_post_id": ["p1", "p2"]}
ITEMS = [{"post_id": ["p5"], "topic_id": ["3"]}, {"post_id": ["p77"], "topic_id": ["11"]},
         {"post_id": ["no-such-post"], "topic_id": ["no-such-topic"]}]


def test_pushed_model_signatures_agree(runs):
    workdir, first, _ = runs
    (pushed,) = first["pushed_models"]
    assert os.path.dirname(pushed["path"]) == os.path.join(workdir, "serving", "dssm")
    assert os.path.basename(pushed["path"]).isdigit()
    assert os.path.exists(os.path.join(pushed["path"], "saved_model.pb"))
    model = tf.saved_model.load(pushed["path"])
    assert set(model.signatures) >= {"serving_default", "user_embedding", "item_embedding"}
    for name in ("serving_default", "user_embedding", "item_embedding"):
        (spec,) = model.signatures[name].structured_input_signature[1].values()
        assert spec.dtype == tf.string and spec.shape.as_list() == [None] and spec.name == "examples"

    pairs = [_example(**USER, **item) for item in ITEMS]
    user = model.signatures["user_embedding"](examples=tf.constant(pairs))["embedding"].numpy()
    item = model.signatures["item_embedding"](examples=tf.constant(pairs))["embedding"].numpy()
    score = model.signatures["serving_default"](examples=tf.constant(pairs))["score"].numpy()
    assert user.shape == item.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(user, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(item, axis=1), 1.0, rtol=1e-5)
    gamma = TrainerConfig().gamma
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-gamma * (user * item).sum(axis=1))), rtol=1e-5, atol=1e-6)

    # A user-only and an item-only example give the same vectors as the full pair.
    user_only = model.signatures["user_embedding"](examples=tf.constant([_example(**USER)]))["embedding"]
    np.testing.assert_allclose(user_only.numpy()[0], user[0], rtol=1e-5, atol=1e-6)
    item_only = model.signatures["item_embedding"](examples=tf.constant([_example(**ITEMS[1])]))["embedding"]
    np.testing.assert_allclose(item_only.numpy()[0], item[1], rtol=1e-5, atol=1e-6)

    # The single-tower models, pushed beside the full one with the same version.
    version = os.path.basename(pushed["path"])
    assert pushed["towers"] == {t: os.path.join(workdir, "serving", f"dssm_{t}", version) for t in ("user", "item")}
    user_model = tf.saved_model.load(pushed["towers"]["user"])
    np.testing.assert_allclose(user_model.signatures["serving_default"](examples=tf.constant(pairs))["embedding"],
                               user, rtol=1e-5, atol=1e-6)
    item_model = tf.saved_model.load(pushed["towers"]["item"])
    np.testing.assert_allclose(item_model.signatures["item_embedding"](examples=tf.constant(pairs))["embedding"],
                               item, rtol=1e-5, atol=1e-6)


def test_rejected_rows_file_exists_and_is_empty(runs):
    _, first, _ = runs
    files = glob.glob(os.path.join(first["examples_uri"], "ingest_report", "*-rejected.jsonl"))
    assert sorted(os.path.basename(f) for f in files) == ["eval-rejected.jsonl", "train-rejected.jsonl"]
    assert all(os.path.getsize(f) == 0 for f in files)


def test_a_data_anomaly_stops_the_run_before_transform(tmp_path):
    # A curated schema that allows only client_type 0: the sample has 0 and 1.
    schema = (open(os.path.join(REPO, "schema", "schema.pbtxt")).read()
              .replace('name: "client_type"\n  type: INT\n',
                       'name: "client_type"\n  type: INT\n  int_domain {\n    min: 0\n    max: 0\n  }\n'))
    assert "max: 0" in schema
    (tmp_path / "schema.pbtxt").write_text(schema)
    (tmp_path / "config.yaml").write_text(f"schema: {tmp_path / 'schema.pbtxt'}\n")
    workdir = str(tmp_path / "run")
    proc = run_local(workdir, "--config", str(tmp_path / "config.yaml"), expect_ok=False)
    assert proc.returncode != 0
    assert "error: the pipeline stopped: DataAnomalyError" in proc.stderr
    assert "train: client_type: " in proc.stderr and "eval: client_type: " in proc.stderr
    by_node = executions_by_node(os.path.join(workdir, "metadata.sqlite"))
    assert "Transform" not in by_node or not by_node["Transform"]
    assert not os.path.exists(os.path.join(workdir, "serving"))


def test_a_model_that_does_not_beat_popularity_is_not_pushed(runs, tmp_path, tmp_path_factory):
    workdir, first, _ = runs
    (tmp_path / "strict.yaml").write_text("evaluation:\n  bless_margin: 1.0\n")  # no model can beat that
    with holding_the_shared_run(tmp_path_factory):
        proc = run_local(workdir, "--config", str(tmp_path / "strict.yaml"), expect_ok=False)
    # Nothing pushed is exit code 3 (a cron job or CI sees it), the reasons on the last line.
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("not pushed (exit code 3") and "does not beat the popularity baseline" in last
    with open(os.path.join(workdir, "run_summary.json")) as f:
        summary = json.load(f)
    states = {c["component"]: c["state"] for c in summary["components"]}
    assert states["Trainer"] == "CACHED" and states["RetrievalEvaluator"] == "COMPLETE"
    assert summary["pushed"] is False and summary["pushed_models"] == []
    assert "does not beat the popularity baseline" in summary["not_pushed_because"][0]
    assert summary["item_index"]["not_indexed_because"] == "model_blessing says not blessed"
    assert os.listdir(os.path.join(workdir, "serving", "dssm")) == [os.path.basename(first["pushed_models"][0]["path"])]


def test_a_partial_run_leaves_the_whole_runs_summary_and_report_alone(runs, tmp_path_factory):
    """`--until Transform` on a workdir that holds a finished run: run_summary.json and report/ stay
    byte for byte (they describe the model that is served); the partial run's own are under partial/."""
    from tests.conftest import tree_digest

    workdir = runs[0]
    with holding_the_shared_run(tmp_path_factory):
        before = (tree_digest(os.path.join(workdir, "report")),
                  open(os.path.join(workdir, "run_summary.json"), "rb").read())
        partial = run_local(workdir, "--until", "Transform", "--no-serving-demo")
        after = (tree_digest(os.path.join(workdir, "report")),
                 open(os.path.join(workdir, "run_summary.json"), "rb").read())
    assert after == before
    assert partial["partial_run"] == {"until": "Transform",
                                      "whole_run_summary": os.path.join(workdir, "run_summary.json")}
    assert {c["component"] for c in partial["components"]} >= {"TsvExampleGen", "Transform"}
    assert "Trainer" not in {c["component"] for c in partial["components"]}
    page = open(os.path.join(workdir, "partial", "report", "index.html")).read()
    assert "A partial run (--until Transform)" in page and "Nothing pushed: the Pusher did not run" in page
    assert f"its summary and report are under {os.path.join(workdir, 'partial')}" in partial["_stdout"]


def test_the_run_says_what_it_does_from_its_first_line_and_is_never_long_quiet(runs):
    """Issue [first-week] 4: a run printed nothing for its first 28-35 s, Transform 21 s, the export
    and infra validation 12-16 s. Now its first line is the input check (before TFX is imported), and
    a heartbeat names what runs whenever 10 s pass without a line. The gaps are read off the lines'
    own timestamps (whole seconds); bench/cli_startup.py measures the first line's delay."""
    import re

    _, first, second = runs
    for summary in (first, second):  # the second run is wholly cached: the import is as long
        stamped = [line for line in summary["_stderr"].splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
        assert stamped[0].endswith(" checking the inputs ..."), stamped[:3]
        assert stamped[1].endswith(" importing TFX and TensorFlow (about 20 s) ..."), stamped[:3]
        seconds = [int(x[:2]) * 3600 + int(x[3:5]) * 60 + int(x[6:8]) for x in stamped]
        gaps = [(b - a) % 86400 for a, b in zip(seconds, seconds[1:], strict=False)]
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        assert gaps[worst] <= 12, stamped[worst:worst + 2]  # 10 s of quiet, then the heartbeat (1 s polls)


def test_infra_validation_blessed_and_the_demo_served_both_towers(runs):
    workdir, first, second = runs
    infra = first["infra_validation"]
    assert infra["blessed"] is True and "error" not in infra
    assert infra["towers"]["user"]["dim"] == infra["towers"]["item"]["dim"] == 128
    assert "served dssm version" in first["_stdout"] and "user_embedding (128-d)" in first["_stdout"]
    assert "served dssm version" not in second["_stdout"]


def test_towers_over_grpc_equal_the_saved_model_in_process(runs):
    from schema.item_vectors import VectorTable
    from schema.spec import load_spec
    from serving.client import ServingClient, TowerClient
    from serving.model_config import read_config_file
    from serving.server import ModelServer

    workdir, first, _ = runs
    (pushed,) = first["pushed_models"]
    model = tf.saved_model.load(pushed["path"])
    user_features = {"client_id": "u7", "client_type": 1, "follow_topic_id": ["3", "8"],
                     "all_topic_fav_7": {"3": 0.7, "11": 0.3}, "read_post_id": ["p1", "p2"]}
    item_features = [{"post_id": i["post_id"][0], "topic_id": i["topic_id"][0]} for i in ITEMS]
    expected_user = model.signatures["user_embedding"](examples=tf.constant([_example(**USER)]))["embedding"]
    expected_items = model.signatures["item_embedding"](
        examples=tf.constant([_example(**i) for i in ITEMS]))["embedding"]
    config = read_config_file(os.path.join(workdir, "serving", "models.config"))
    assert [c.name for c in config] == ["dssm", "dssm_user", "dssm_item"]
    assert all(c.policy == "latest" and c.num_versions == 2 for c in config)  # the indexed one and the newest
    with ModelServer(config, port=0, poll_seconds=0) as server, ServingClient(server.target, "dssm") as client:
        (vectors,) = glob.glob(os.path.join(workdir, "item_vectors", "*"))
        towers = TowerClient(client, load_spec(), VectorTable.load(vectors))
        np.testing.assert_allclose(towers.user_embeddings([user_features]), expected_user, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(towers.item_embeddings(item_features), expected_items, rtol=1e-5, atol=1e-6)
        assert client.wait_until_available() == int(os.path.basename(pushed["path"]))


def _most_frequent_topics():
    """post_id -> its most frequent topic_id in the sample logs (ties: the smallest), with csv."""
    import collections
    import csv

    counts = collections.defaultdict(collections.Counter)
    for name in ("train.tsv", "eval.tsv"):
        with open(os.path.join(REPO, "data", "sample", name), newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                counts[row["post_id"]][row["topic_id"]] += 1
    return {p: min(c, key=lambda t: (-c[t], t)) for p, c in counts.items()}


def test_item_index_recall_equals_brute_force_over_the_catalog(runs, tmp_path_factory):
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.milvus import MilvusIndex
    from retrieval.recall import Recaller, SavedModelTowers
    from schema.spec import load_spec

    workdir, first, second = runs
    index = first["item_index"]
    (ids_file,) = glob.glob(os.path.join(workdir, "item_vectors", "*", "item_ids.txt"))
    catalog = open(ids_file).read().split()
    assert index["count"] == len(catalog) == 1477 and index["dim"] == 128
    assert second["item_index"]["collection"] == index["collection"]  # cached: same generation
    assert index["model_version"] == int(first["pushed_models"][0]["version"])  # indexed after the push

    # Every catalog item through the item tower in this process, with its most frequent logged topic.
    topics = _most_frequent_topics()
    model = tf.saved_model.load(first["pushed_models"][0]["path"])
    examples = [_example(post_id=[p], **({"topic_id": [topics[p]]} if p in topics else {})) for p in catalog]
    items = np.concatenate([model.signatures["item_embedding"](examples=tf.constant(examples[i:i + 512]))["embedding"]
                            for i in range(0, len(examples), 512)])
    user = model.signatures["user_embedding"](examples=tf.constant([_example(**USER)]))["embedding"].numpy()[0]
    scores = items @ user
    read = set(USER["read_post_id"])
    expected = [catalog[i] for i in np.argsort(-scores, kind="stable") if catalog[i] not in read][:20]

    # Milvus Lite opens a file in one process at a time: the other xdist worker's recall tests wait.
    with holding_the_shared_run(tmp_path_factory):
        item_index = MilvusIndex(IndexConfig(uri=os.path.join(workdir, "milvus.db")))
        try:
            assert item_index.generation()[0] == index["collection"]
            store = ItemStore(item_index.config, "post_id", client=item_index.client)
            recaller = Recaller(SavedModelTowers(os.path.join(workdir, "serving", "dssm")), item_index, load_spec(),
                                store)
            user_features = {"client_id": "u7", "client_type": 1, "follow_topic_id": ["3", "8"],
                             "all_topic_fav_7": {"3": 0.7, "11": 0.3}, "read_post_id": ["p1", "p2"]}
            (hits,) = recaller.recall([user_features], k=20)
            assert [h["id"] for h in hits] == expected
            np.testing.assert_allclose([h["score"] for h in hits], sorted(scores[[catalog.index(e) for e in expected]],
                                                                          reverse=True), atol=1e-4)
            (in_topic,) = recaller.recall([user_features], k=5, filters={"topic_id": ["3"]})
            assert in_topic and all(topics.get(h["id"]) == "3" for h in in_topic)
        finally:  # closing the client leaves this process's Milvus Lite server holding the file: stop it
            from milvus_lite.server_manager import server_manager_instance

            item_index.close()
            server_manager_instance.release_server(os.path.join(workdir, "milvus.db"))


def test_retrieval_metrics_equal_a_numpy_ranking_of_the_whole_catalog(runs):
    """The evaluator streams the catalog in chunks; here every user is ranked against the whole
    catalog at once with numpy (stable sort: ties by catalog order), from the logs and the model."""
    import collections
    import csv
    import hashlib
    import math

    workdir, first, _ = runs
    (ids_file,) = glob.glob(os.path.join(workdir, "item_vectors", "*", "item_ids.txt"))
    catalog = open(ids_file).read().split()
    position = {p: i for i, p in enumerate(catalog)}
    topics = _most_frequent_topics()  # one topic per post in the sample
    clicks = collections.Counter()
    with open(os.path.join(REPO, "data", "sample", "train.tsv"), newline="") as f:
        clicks.update(r["post_id"] for r in csv.DictReader(f, delimiter="\t") if r["act"] == "1")

    # Queries: each eval user's clicked row with the shortest read history in ExampleGen's eval split
    # (ties: the smallest sha256 of the row serialized with sorted features), and all its clicked posts.
    queries, relevant = {}, collections.defaultdict(set)
    for record in tf.data.TFRecordDataset(glob.glob(os.path.join(first["examples_uri"], "Split-eval", "*")),
                                          compression_type="GZIP"):
        ex = tf.train.Example.FromString(record.numpy())
        f = ex.features.feature
        if f["act"].int64_list.value[0] != 1:
            continue
        user = f["client_id"].bytes_list.value[0]
        history = f["read_post_id"].bytes_list.value
        read = {v.decode() for v in history}
        key = (len(history), hashlib.sha256(ex.SerializeToString(deterministic=True)).digest())
        if user not in queries or key < queries[user][2]:
            queries[user] = (record.numpy(), read, key)
        relevant[user].add(f["post_id"].bytes_list.value[0].decode())
    users = list(queries)
    assert len(users) == first["retrieval"]["users"] == first["retrieval"]["eval_users"]

    model = tf.saved_model.load(first["model_uri"] + "/Format-Serving")
    examples = [_example(post_id=[p], **({"topic_id": [topics[p]]} if p in topics else {})) for p in catalog]

    def embed(signature, serialized):
        return np.concatenate([model.signatures[signature](examples=tf.constant(serialized[i:i + 512]))["embedding"]
                               for i in range(0, len(serialized), 512)])

    items = embed("item_embedding", examples)
    # The logged rows with the read posts' vectors by value, from the sample's vector file, by hand.
    dim = len(next(iter(VECTORS.values())))
    with_content = []
    for u in users:
        ex = tf.train.Example.FromString(queries[u][0])
        read = [p.decode() for p in ex.features.feature["read_post_id"].bytes_list.value]
        ex.features.feature["client_embed"].float_list.value.extend(
            v for p in read for v in VECTORS.get(p, [0.0] * dim))
        with_content.append(ex.SerializeToString())
    user_vectors = embed("user_embedding", with_content)
    popularity = np.array([clicks[p] for p in catalog], np.float64)

    def recall_at(scores_of, k):
        total = 0.0
        for u, user in enumerate(users):
            scores = scores_of(u).astype(np.float64)
            scores[[position[p] for p in queries[user][1] if p in position]] = -np.inf
            top = {catalog[i] for i in np.argsort(-scores, kind="stable")[:k]}
            total += len(top & relevant[user]) / len(relevant[user])
        return total / len(users)

    for k in (10, 50, 100):
        model_recall = recall_at(lambda u: items @ user_vectors[u], k)
        popularity_recall = recall_at(lambda u: popularity, k)
        assert math.isclose(first["retrieval"]["model"][f"recall@{k}"], model_recall, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(first["retrieval"]["popularity"][f"recall@{k}"], popularity_recall, rel_tol=1e-9,
                            abs_tol=1e-12)
        for side in ("model", "popularity"):  # each figure inside its own bootstrap interval
            low, high = first["retrieval"][f"{side}_ci"][f"recall@{k}"]
            assert low <= first["retrieval"][side][f"recall@{k}"] <= high

    # Per slice, at the blessing's k: the users of each client type, and the clicked posts of each topic.
    slices = first["retrieval"]["slices"]
    k = slices["k"]
    per_type, per_topic = collections.defaultdict(list), collections.defaultdict(list)
    for u, user in enumerate(users):
        scores = (items @ user_vectors[u]).astype(np.float64)
        scores[[position[p] for p in queries[user][1] if p in position]] = -np.inf
        top = {catalog[i] for i in np.argsort(-scores, kind="stable")[:k]}
        client_type = tf.train.Example.FromString(queries[user][0]).features.feature["client_type"].int64_list.value
        per_type[str(client_type[0])].append(len(top & relevant[user]) / len(relevant[user]))
        for topic in {topics.get(p, "(not in the logs)") for p in relevant[user]}:
            mine = {p for p in relevant[user] if topics.get(p, "(not in the logs)") == topic}
            per_topic[topic].append(len(top & mine) / len(mine))
    for column, expected in (("client_type", per_type), ("topic_id", per_topic)):
        groups = slices["by"][column]["groups"]
        assert slices["by"][column]["side"] == ("user" if column == "client_type" else "item")
        assert len(groups) == min(20, len(expected))
        biggest = sorted(expected, key=lambda v: (-len(expected[v]), v))[:20]
        assert [g["value"] for g in groups] == biggest
        for g in groups:
            assert g["users"] == len(expected[g["value"]])
            assert math.isclose(g["model"], float(np.mean(expected[g["value"]])), rel_tol=1e-9, abs_tol=1e-12)
            if g["users"] >= 2:
                assert g["model_ci"][0] <= g["model"] <= g["model_ci"][1]
            else:
                assert g["model_ci"] is None and g["ci_note"]
