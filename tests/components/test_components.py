"""Each custom component's executor on tiny made-up artifacts (tests/made_up.py), in seconds, and the
pipeline's wiring without a run: a change can be checked here before the end-to-end suite. Expected
figures are worked out by hand from the made-up towers (see made_up.py)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.anomaly_gate import AnomalyGate, DataAnomalyError
from components.artifacts import ItemIndex
from components.infra_validator import REPORT_FILE, ServingInfraValidator
from components.item_indexer import Executor as ItemIndexerExecutor
from components.retrieval_evaluator import EVALUATION_FILE, RetrievalEvaluator
from components.tower_pusher import TOWER_DESTINATIONS
from components.tower_pusher import Executor as TowerPusherExecutor
from model.run_metrics import METRICS_FILE
from schema.spec import load_spec
from tests import made_up

SPEC = load_spec()

# Training clicks (popularity): p5 x3, p4 x2, p3 x1, p1 and p2 shown but not clicked.
TRAIN = ([made_up.example(1, "u9", "p5")] * 3 + [made_up.example(1, "u9", "p4")] * 2
         + [made_up.example(1, "u9", "p3"), made_up.example(0, "u9", "p1"), made_up.example(0, "u9", "p2")])
# Eval users: u1 follows t1, read p1, clicked p2; u2 follows t2, clicked p5; u3 follows t3, clicked p5
# and p1. An act=0 row is never relevant.
EVAL = [made_up.example(1, "u1", "p2", follow=["t1"], read=["p1"]),
        made_up.example(0, "u1", "p3", follow=["t1"], read=["p1"]),
        made_up.example(1, "u2", "p5", follow=["t2"]),
        made_up.example(1, "u3", "p5", follow=["t3"]),
        made_up.example(1, "u3", "p1", follow=["t3"])]
CATALOG = list(made_up.WEIGHTS)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("made-up")
    return {"model": made_up.model_artifact(root / "model"),
            "collapsed": made_up.model_artifact(root / "collapsed", collapsed=True),
            "examples": made_up.examples_artifact(root / "examples", {"train": TRAIN, "eval": EVAL}),
            "item_vectors": made_up.item_vectors_artifact(root / "vectors", CATALOG)}


def _blessing(cls, root, blessed: bool):
    artifact = made_up.output_artifact(cls, root)
    artifact.set_int_custom_property("blessed", int(blessed))
    return artifact


# ---- RetrievalEvaluator ----

def _evaluate(artifacts, tmp_path, model="model", **params):
    model_run = made_up.output_artifact(standard_artifacts.ModelRun, tmp_path / "model_run")
    (tmp_path / "model_run" / METRICS_FILE).write_text(json.dumps({"eval_auc": None}))
    evaluation = made_up.output_artifact(standard_artifacts.ModelEvaluation, tmp_path / "evaluation")
    blessing = made_up.output_artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing")
    # max_regression is the pipeline's continuous.max_regression, always given (no default of its own)
    served = {"max_regression": 0.0, **{k: params.pop(k) for k in ("served_model_base", "max_regression")
                                        if k in params}}
    evaluation_config = {"ks": [1, 2], "bless_k": 2, "max_users": 0, "bootstrap_samples": 200, **params}
    properties = {"feature_spec": SPEC.to_json(), "evaluation_config": json.dumps(evaluation_config), **served}
    RetrievalEvaluator.EXECUTOR_SPEC.executor_class().Do(
        {"model": [artifacts[model]], "model_run": [model_run], "examples": [artifacts["examples"]],
         "item_vectors": [artifacts["item_vectors"]]},
        {"evaluation": [evaluation], "blessing": [blessing]}, properties)
    with open(tmp_path / "evaluation" / EVALUATION_FILE) as f:
        return json.load(f), blessing


def test_the_evaluator_ranks_the_catalog_as_worked_out_by_hand(artifacts, tmp_path):
    result, blessing = _evaluate(artifacts, tmp_path)
    # Model: u1 -> p2 (its read p1 excluded) hit at 1; u2 -> p3, p4: no hit; u3 -> p5, p1: 1/2 at 1, 2/2 at 2.
    assert result["model"]["recall@1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert result["model"]["recall@2"] == pytest.approx((1 + 0 + 1) / 3)
    # Popularity p5, p4, p3: u1 no hit; u2 hit at 1; u3 p5 of {p5, p1}.
    assert result["popularity"]["recall@1"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert result["popularity"]["recall@2"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert result["users"] == 3 and result["catalog_items"] == 5 and result["relevant_items"] == 4
    # Per-user lifts at 2 are +1, -1, +0.5: the interval holds 0, and 3 users are too few.
    assert result["lift"] == pytest.approx(1 / 6)
    assert result["lift_ci"][0] < 0 < result["lift_ci"][1]
    assert not result["blessed"] and blessing.get_int_custom_property("blessed") == 0
    reasons = " | ".join(result["not_blessed_because"])
    assert "does not beat the popularity baseline" in reasons
    assert "too few eval users: 3 < min_eval_users 200" in reasons
    assert os.path.exists(tmp_path / "blessing" / "NOT_BLESSED")
    # Each user's figures, for a paired comparison with another model on the same users.
    assert (tmp_path / "evaluation" / "per_user.tsv").read_text().splitlines() == [
        "user\trecall@1\trecall@2\thit_rate@1\thit_rate@2",
        "u1\t1\t1\t1\t1", "u2\t0\t0\t0\t0", "u3\t0.5\t1\t1\t1"]


def test_the_evaluator_keeps_read_posts_when_asked_and_blesses_within_the_margin(artifacts, tmp_path):
    result, blessing = _evaluate(artifacts, tmp_path, exclude_read=False, bless_margin=-2.0, allow_few_eval_users=True)
    assert result["model"]["recall@1"] == pytest.approx((0 + 0 + 0.5) / 3)  # u1's first is its read p1
    assert result["model"]["recall@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["blessed"] and blessing.get_int_custom_property("blessed") == 1
    assert os.path.exists(tmp_path / "blessing" / "BLESSED")


def test_a_candidate_worse_than_the_served_version_is_not_blessed(artifacts, tmp_path):
    import shutil

    base = tmp_path / "serving" / "m"
    shutil.copytree(os.path.join(artifacts["model"].uri, "Format-Serving"), base / "7")
    os.makedirs(base / "9")  # a version still being copied (no saved_model.pb) is not the served one
    # 20 users who follow t2 and click p3: the served towers rank p3 first for each; the collapsed ones
    # rank p1, p2 (by weight alone), so the candidate's recall@2 is 0 where the served one's is 1.
    evals = [made_up.example(1, f"v{i}", "p3", follow=["t2"]) for i in range(20)]
    examples = made_up.examples_artifact(tmp_path / "examples", {"train": TRAIN, "eval": evals})
    artifacts = {**artifacts, "examples": examples}
    lenient = {"bless_margin": -2.0, "allow_few_eval_users": True, "served_model_base": str(base)}
    result, _ = _evaluate(artifacts, tmp_path / "same", **lenient)  # the served towers themselves
    assert result["served"]["version"] == 7 and result["served"]["difference"] == 0 and result["blessed"]
    assert result["served"]["metrics"]["recall@2"] == 1.0
    result, blessing = _evaluate(artifacts, tmp_path / "worse", model="collapsed", **lenient)
    assert result["model"]["recall@2"] == 0.0
    assert result["served"]["difference"] == -1.0 and result["served"]["difference_ci"] == [-1.0, -1.0]
    assert not result["blessed"] and blessing.get_int_custom_property("blessed") == 0
    (reason,) = result["not_blessed_because"]
    assert "is worse than the served version 7's 1.0000 by more than max_regression 0.0 with 95% confidence" in reason
    # Allowed to be worse by up to 1: blessed. And the 3 users of EVAL cannot show a regression with
    # confidence (per-user differences 0, 0, -1/2: the interval reaches 0).
    result, _ = _evaluate(artifacts, tmp_path / "allowed", model="collapsed", max_regression=1.0, **lenient)
    assert result["blessed"]
    result, _ = _evaluate({**artifacts, "examples": made_up.examples_artifact(tmp_path / "ex3", {"train": TRAIN,
                                                                                              "eval": EVAL})},
                          tmp_path / "few", model="collapsed", **lenient)
    assert result["served"]["difference"] == pytest.approx(-1 / 6) and result["served"]["difference_ci"][1] == 0
    assert result["blessed"]


# ---- AnomalyGate ----

def _anomalies(root, per_split: dict[str, dict[str, str]]):
    artifact = made_up.output_artifact(standard_artifacts.ExampleAnomalies, root)
    artifact.split_names = json.dumps(sorted(per_split))
    for split, found in per_split.items():
        anomalies = anomalies_pb2.Anomalies()
        for feature, description in found.items():
            anomalies.anomaly_info[feature].reason.add(description=description)
        os.makedirs(root / f"Split-{split}")
        (root / f"Split-{split}" / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    return artifact


def test_the_anomaly_gate_stops_on_any_anomaly_and_names_each(tmp_path):
    gate = AnomalyGate.EXECUTOR_SPEC.executor_class()
    clean = _anomalies(tmp_path / "clean", {"train": {}, "eval": {}})
    gate.Do({"anomalies": [clean]}, {}, {})
    bad = _anomalies(tmp_path / "bad", {"train": {}, "eval": {"client_type": "Unexpected string values"}})
    with pytest.raises(DataAnomalyError) as e:
        gate.Do({"anomalies": [bad]}, {}, {})
    assert "eval: client_type: Unexpected string values" in str(e.value)
    assert "train:" not in str(e.value)


# ---- TowerPusher ----

def _push(artifacts, tmp_path, blessed: bool, keep: int):
    pushed = made_up.output_artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(tmp_path / "serving" / "m")))
    TowerPusherExecutor().Do(
        {"model": [artifacts["model"]],
         "model_blessing": [_blessing(standard_artifacts.ModelBlessing, tmp_path / "mb", blessed)],
         "infra_blessing": [_blessing(standard_artifacts.InfraBlessing, tmp_path / "ib", True)]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination),
         "custom_config": json.dumps({"keep_versions": keep})})
    return pushed


def test_the_pusher_writes_both_towers_beside_the_model_and_keeps_the_newest(artifacts, tmp_path):
    for old in ("1", "2"):  # versions pushed before, in every folder
        for folder in ("m", "m_user", "m_item"):
            os.makedirs(tmp_path / "serving" / folder / old)
    pushed = _push(artifacts, tmp_path, blessed=True, keep=2)
    assert pushed.get_int_custom_property("pushed") == 1
    version = os.path.basename(pushed.get_string_custom_property("pushed_destination").rstrip("/"))
    towers = pushed.get_json_value_custom_property(TOWER_DESTINATIONS)
    for folder in ("m", "m_user", "m_item"):
        assert sorted(os.listdir(tmp_path / "serving" / folder)) == sorted(["2", version])
    assert towers["user"] == str(tmp_path / "serving" / "m_user" / version)
    # The user-only model's default signature is the user tower: t2 followed -> [0, 1, 0, 1].
    user = tf.saved_model.load(towers["user"]).signatures["serving_default"]
    vector = user(examples=tf.constant([made_up.example(follow=["t2"])]))["embedding"].numpy()
    np.testing.assert_array_equal(vector, [made_up.user_vector(["t2"])])


def test_the_pusher_pushes_nothing_unblessed(artifacts, tmp_path):
    pushed = _push(artifacts, tmp_path, blessed=False, keep=2)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not os.path.exists(tmp_path / "serving" / "m_user")


# ---- ServingInfraValidator ----

def _validate(artifacts, tmp_path, model: str):
    blessing = made_up.output_artifact(standard_artifacts.InfraBlessing, tmp_path / model)
    ServingInfraValidator.EXECUTOR_SPEC.executor_class().Do(
        {"model": [artifacts[model]], "examples": [artifacts["examples"]], "item_vectors": [artifacts["item_vectors"]]},
        {"blessing": [blessing]},
        {"model_name": "m", "split": "eval", "num_examples": 5, "timeout_seconds": 120,
         "feature_spec": SPEC.to_json()})
    with open(tmp_path / model / REPORT_FILE) as f:
        return json.load(f), sorted(os.listdir(tmp_path / model))


def test_the_infra_validator_serves_both_towers_and_refuses_a_collapsed_one(artifacts, tmp_path):
    report, files = _validate(artifacts, tmp_path, "model")
    assert report["blessed"], report
    assert "INFRA_BLESSED" in files
    assert report["towers"]["user"]["dim"] == report["towers"]["item"]["dim"] == made_up.DIM
    assert report["towers"]["user"]["examples"] == 5
    report, files = _validate(artifacts, tmp_path, "collapsed")
    assert not report["blessed"] and "INFRA_NOT_BLESSED" in files
    assert "user_embedding: the same vector for 3 different inputs (a collapsed model)" in report["error"]


# ---- ItemIndexer ----

def test_the_item_indexer_writes_the_item_tower_of_every_catalog_item(artifacts, tmp_path):
    from retrieval.index import IndexConfig
    from retrieval.milvus import VECTOR_FIELD, MilvusIndex

    index = made_up.output_artifact(ItemIndex, tmp_path / "index")
    config = {"uri": str(tmp_path / "milvus.db"), "alias": "items"}
    ItemIndexerExecutor().Do(
        {"model": [artifacts["model"]], "examples": [artifacts["examples"]],
         "item_vectors": [artifacts["item_vectors"]],
         "model_blessing": [_blessing(standard_artifacts.ModelBlessing, tmp_path / "mb", True)]},
        {"index": [index]},
        {"feature_spec": SPEC.to_json(), "index_config": json.dumps(config), "catalog_source": "vectors"})
    assert index.get_int_custom_property("indexed") == 1
    assert index.get_int_custom_property("count") == 5 and index.get_int_custom_property("dim") == made_up.DIM
    item_index = MilvusIndex(IndexConfig(**config))
    rows = item_index.client.query(item_index.generation()[0], filter='post_id != ""',
                                 output_fields=["post_id", "topic_id", VECTOR_FIELD])
    assert sorted(r["post_id"] for r in rows) == CATALOG
    for r in rows:  # the item's logged topic, and its made-up vector, L2-normalised
        assert r["topic_id"] == made_up.ITEM_TOPIC[r["post_id"]]
        want = made_up.item_vector(r["post_id"])
        np.testing.assert_allclose(r[VECTOR_FIELD], want / np.linalg.norm(want), atol=1e-6)
    # A user following t2 is closest to p3 and p4 (their topic; in cosine the weight cancels, so the
    # two tie), then the others.
    # The item store: seeded with the catalog, its logged topics and the prepared vectors.
    from retrieval.item_store import ItemStore

    store = ItemStore(IndexConfig(**config), "post_id", client=item_index.client)
    stored = store.get(CATALOG)
    assert sorted(stored) == CATALOG and store.count() == 5
    assert all(stored[p]["topic_id"] == made_up.ITEM_TOPIC[p] for p in CATALOG)
    np.testing.assert_array_equal(store.vectors(CATALOG), np.ones((5, made_up.DIM), np.float32))
    (hits,) = item_index.search(made_up.user_vector(["t2"])[None, :], 3)
    assert {h["id"] for h in hits[:2]} == {"p3", "p4"}
    assert hits[0]["score"] == pytest.approx(hits[1]["score"], abs=1e-6) and hits[1]["score"] > hits[2]["score"] + 0.5
    item_index.close()


def test_the_item_indexer_indexes_nothing_unblessed(artifacts, tmp_path):
    index = made_up.output_artifact(ItemIndex, tmp_path / "index")
    ItemIndexerExecutor().Do(
        {"model": [artifacts["model"]], "examples": [artifacts["examples"]],
         "item_vectors": [artifacts["item_vectors"]],
         "model_blessing": [_blessing(standard_artifacts.ModelBlessing, tmp_path / "mb", False)]},
        {"index": [index]},
        {"feature_spec": SPEC.to_json(), "index_config": json.dumps({"uri": str(tmp_path / "m.db")}),
         "catalog_source": "vectors"})
    assert index.get_int_custom_property("indexed") == 0
    assert "model_blessing says not blessed" in index.get_string_custom_property("not_indexed_because")
    assert not os.path.exists(tmp_path / "m.db")


# ---- recall across model versions ----

def test_recall_never_mixes_model_versions_while_the_alias_moves(tmp_path):
    """Two pushed versions whose towers only agree with themselves (made_up.py, rotate), generations
    of the item index filled by each in turn under concurrent recall: every answer's user vector comes
    from the version that filled the generation it searched, so a user who follows t1 always gets
    p1 and p2 (a mixed answer would rank another topic's items first)."""
    import threading

    from retrieval.index import IndexConfig
    from retrieval.milvus import Batch, MilvusIndex, write_generation
    from retrieval.recall import Recaller, ServingTowers
    from serving.client import ServingClient
    from serving.model_config import config_text, parse_config_text
    from serving.server import ModelServer

    base = tmp_path / "serving" / "m"
    for version, rotate in ((1, 0), (2, 1)):
        module = made_up.MadeUpTowers(rotate=rotate)
        tf.saved_model.save(module, str(base / str(version)), signatures=module.signatures("all"))
    config = IndexConfig(uri=str(tmp_path / "milvus.db"), alias="items", keep_generations=2)

    def index(version):
        vectors = np.stack([made_up.item_vector(p, rotate=version - 1) for p in CATALOG])
        batch = Batch(CATALOG, {"topic_id": [made_up.ITEM_TOPIC[p] for p in CATALOG]}, vectors)
        return write_generation(config, [batch], "post_id", ["topic_id"], made_up.DIM, model_version=version)

    assert index(1)["model_version"] == 1
    user = made_up.example(follow=["t1"])
    answers, failures, stop = [], [], threading.Event()
    served = parse_config_text(config_text({"m": str(base)}, num_versions=2))
    with ModelServer(served, port=0, poll_seconds=0) as server:
        def query():
            with ServingClient(server.target, "m") as client:
                recaller = Recaller(ServingTowers(client), MilvusIndex(config, refresh_seconds=0), SPEC,
                                    made_up.NoContent())
                while not stop.is_set():
                    try:
                        answer = recaller.answer([user], 2, exclude_read=False)
                        answers.append((answer["model_version"], {h["id"] for h in answer["hits"][0]}))
                    except Exception as e:  # noqa: BLE001 - every failure is counted
                        failures.append(repr(e))

        threads = [threading.Thread(target=query) for _ in range(3)]
        for t in threads:
            t.start()
        for version in (2, 1, 2, 1, 2):
            index(version)
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert {v for v, _ in answers} == {1, 2}, "both versions were searched"
    mixed = [a for a in answers if a[1] != {"p1", "p2"}]
    assert not mixed, f"{len(mixed)} mixed answers of {len(answers)}: {mixed[:3]}"

