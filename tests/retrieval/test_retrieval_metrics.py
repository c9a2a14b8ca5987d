"""Retrieval metrics against values worked out by hand."""
import math

import numpy as np
import pytest

from retrieval.metrics import metrics_at_k, rank_catalog, topk_indices


def test_topk_orders_by_score_then_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 1.0, 2.0, 0.0]])
    assert topk_indices(scores, 3).tolist() == [[1, 3, 2], [0, 2, 1]]


def test_topk_ties_at_the_cut_keep_the_lowest_indices():
    # 40 items tied at 0 behind one at 1: whichever tied items argpartition picks, the top 5 is 7, 0, 1, 2, 3.
    scores = np.zeros((3, 41))
    scores[:, 7] = 1.0
    assert topk_indices(scores, 5).tolist() == [[7, 0, 1, 2, 3]] * 3


def test_exclusion_removes_items_before_ranking():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    assert rank_catalog(scores, [{0, 2}], 2).tolist() == [[1, 3]]


def test_metrics_by_hand():
    top = np.array([[5, 1, 7], [2, 3, 4]])
    relevant = [{1, 9}, {8}]
    m = metrics_at_k(top, relevant, [1, 3])
    # user 0: relevant {1, 9}; hit at rank 2 (item 1). user 1: no hit.
    assert m["recall@1"] == 0.0 and m["hit_rate@1"] == 0.0 and m["ndcg@1"] == 0.0
    assert m["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["hit_rate@3"] == pytest.approx(0.5)
    ndcg_user0 = (1 / math.log2(3)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert m["ndcg@3"] == pytest.approx(ndcg_user0 / 2)


def test_k_larger_than_the_catalog():
    scores = np.array([[0.2, 0.7, 0.1]])
    top = rank_catalog(scores, [set()], 10)
    assert top.tolist() == [[1, 0, 2]]  # all three items, no padding
    m = metrics_at_k(top, [{2, 0}], [10])
    assert m["recall@10"] == 1.0 and m["hit_rate@10"] == 1.0
    # hits at ranks 2 and 3; ideal: ranks 1 and 2
    want = (1 / math.log2(3) + 1 / math.log2(4)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(want)


def test_ties_and_exclusions_together():
    # items 0..3 tie at 1.0; item 1 excluded: ranking 0, 2, 3, then 4 (score 0.5)
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 0.5]])
    top = rank_catalog(scores, [{1}], 4)
    assert top.tolist() == [[0, 2, 3, 4]]
    m = metrics_at_k(top, [{1, 4}], [1, 4])  # the excluded relevant item can never be hit
    assert m["recall@4"] == 0.5 and m["recall@1"] == 0.0


@pytest.mark.parametrize("chunk", [1, 7, 50, 64])
def test_running_top_k_over_chunks_equals_ranking_the_whole_catalog(chunk):
    from retrieval.metrics import RunningTopK

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, (37, 64)).astype(np.float64)  # many ties: the lower index must win
    exclude = [set(rng.choice(64, size=q % 4, replace=False).tolist()) for q in range(37)]
    masked = scores.copy()
    for q, ex in enumerate(exclude):
        masked[q, list(ex)] = -np.inf
    running = RunningTopK(37, 10)
    for s in range(0, 64, chunk):
        running.add(masked[:, s:s + chunk], s)
    np.testing.assert_array_equal(running.index, rank_catalog(scores, exclude, 10))
    for q in (0, 5, 36):  # by hand: a stable sort by descending score, excluded items dropped
        expected = [i for i in np.argsort(-scores[q], kind="stable") if i not in exclude[q]][:10]
        assert running.index[q].tolist() == expected


def test_id_table_counts_and_keeps_the_most_frequent_values():
    from components.retrieval_evaluator import IdTable

    rows = [(b"p3", 1, b"t1"), (b"p1", 0, b"t2"), (b"p3", 1, b"t9"), (b"p22", 1, b"t4"), (b"p1", 1, b"t5"),
            (b"p3", 0, b"t9"), (b"p7", 0, b""), (b"p1", 0, b"t5"), (b"p1", 0, b"t2")]
    table = IdTable(["topic_id"], fold_every=2)  # folds between batches: the merge is exercised
    for s in range(0, len(rows), 2):
        batch = rows[s:s + 2]
        table.add(np.array([r[0] for r in batch]), np.array([r[1] for r in batch]),
                  {"topic_id": np.array([r[2] for r in batch])})
    table.fold()
    assert table.ids.tolist() == [b"p1", b"p22", b"p3", b"p7"]
    assert table.counts.tolist() == [1, 1, 2, 0]
    # By hand: p1 has t2 twice and t5 twice (a tie: the smaller, t2); p3 has t9 twice; p7 has none.
    assert table.values["topic_id"].tolist() == [b"t2", b"t4", b"t9", b""]
    pos, found = table.lookup(np.array([b"p3", b"p0", b"p22", b"zz"]))
    assert found.tolist() == [True, False, True, False]
    assert table.ids[pos[found]].tolist() == [b"p3", b"p22"]


def test_the_evaluator_and_the_indexer_give_items_the_same_features():
    """One rule for both: the evaluator's IdTable and ItemIndexer's reducer, on the same random logs.
    Ids and values are digits after a prefix, as in the sample, so that an id and a value joined can
    read like another id and value: (p62, 11) and (p621, 1) must stay two pairs."""
    import collections

    from components.item_indexer import _most_frequent
    from components.retrieval_evaluator import IdTable

    rng = np.random.default_rng(5)
    items = rng.choice([b"p%d" % i for i in range(200)], size=2000)
    topics = rng.choice([b"%d" % i for i in range(1, 21)], size=2000)
    items[:5], topics[:5] = [b"p62", b"p62", b"p62", b"p621", b"p621"], [b"11", b"11", b"11", b"1", b"1"]
    table = IdTable(["topic_id"], fold_every=300)
    for s in range(0, 2000, 250):
        table.add(items[s:s + 250], np.zeros(250, np.int64), {"topic_id": topics[s:s + 250]})
    table.fold()
    counted = collections.Counter(zip(items.tolist(), topics.tolist(), strict=True))
    by_item = collections.defaultdict(list)
    for (item, topic), n in counted.items():
        by_item[item.decode()].append((("topic_id", topic.decode()), n))
    indexer = dict(_most_frequent((item, pairs)) for item, pairs in by_item.items())
    evaluator = {i.decode(): {"topic_id": v.decode()} for i, v in zip(table.ids, table.values["topic_id"], strict=True)}
    assert evaluator == indexer
    assert evaluator["p62"] == {"topic_id": "11"} and evaluator["p621"] == {"topic_id": "1"}


def test_pairs_are_found_in_a_catalog_chunk():
    from components.retrieval_evaluator import _in_chunk, _pairs

    pairs = _pairs([{b"a", b"x"}, set(), {b"c"}])
    query, position = _in_chunk(np.array([b"c", b"b", b"a"]), pairs)
    assert sorted(zip(query.tolist(), position.tolist(), strict=True)) == [(0, 2), (2, 0)]


def test_user_sample_is_stable_and_by_id_hash():
    import hashlib
    import random

    from components.retrieval_evaluator import sample_users

    users = [f"u{i}".encode() for i in range(1000)]
    expected = {u for u in users if hashlib.sha256(u).hexdigest() < sorted(
        hashlib.sha256(v).hexdigest() for v in users)[100]}
    shuffled = users[:]
    random.Random(1).shuffle(shuffled)
    assert sample_users(users, 100) == sample_users(shuffled, 100) == expected
    assert sample_users(users, 5000) == set(users)


def test_the_bootstrap_interval_of_a_mean():
    from retrieval.metrics import bootstrap_interval

    assert bootstrap_interval(np.full(50, 0.3)) == [pytest.approx(0.3), pytest.approx(0.3)]
    rng = np.random.default_rng(1)
    values = rng.normal(0.1, 1.0, size=400)
    low, high = bootstrap_interval(values, samples=2000)
    # The normal approximation, computed here: mean +- 1.96 standard errors.
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.3 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.3 * se)
    assert bootstrap_interval(values, samples=2000) == [low, high]  # the same on every run


def _result(users, model, popularity):
    return {"model": {"recall@50": model}, "popularity": {"recall@50": popularity}, "users": users}


def test_the_gate_blesses_only_a_lift_above_the_margin_with_confidence_over_enough_users():
    from components.retrieval_evaluator import gate

    rng = np.random.default_rng(2)
    clear = rng.normal(0.2, 0.3, size=300)  # a clear lift
    result = _result(300, 0.5, 0.5 - clear.mean())
    assert gate(result, clear, "recall@50", 0.0, 0.0, 0.8, 200, False, 1000) == []
    assert result["lift_ci"][0] > 0
    noisy = rng.normal(0.02, 0.5, size=300)  # a lift of 0.02 that 300 users cannot tell from 0
    reasons = gate(_result(300, 0.5, 0.5 - noisy.mean()), noisy, "recall@50", 0.0, 0.0, 0.8, 200, False, 1000)
    assert len(reasons) == 1 and "with 95% confidence" in reasons[0]
    few = rng.normal(0.3, 0.1, size=47)  # 47 users: the lift is clear but the sample is too small
    reasons = gate(_result(47, 0.5, 0.2), few, "recall@50", 0.0, 0.0, 0.8, 200, False, 1000)
    assert reasons == ["too few eval users: 47 < min_eval_users 200 (evaluation.allow_few_eval_users: true "
                       "blesses anyway)"]
    assert gate(_result(47, 0.5, 0.2), few, "recall@50", 0.0, 0.0, 0.8, 200, True, 1000) == []
    reasons = gate(_result(300, 0.5, 0.5 - clear.mean()), clear, "recall@50", 0.0, 0.7, None, 200, False, 1000)
    assert reasons == ["the eval AUC is undefined, so the floor 0.7 cannot be checked"]


def test_auc_is_undefined_when_a_split_has_one_class():
    import tensorflow as tf

    from model.trainer import defined_auc

    only_clicks = tf.keras.metrics.AUC(from_logits=True)
    only_clicks.update_state([1, 1, 1], [0.2, -1.0, 3.0])
    assert defined_auc(only_clicks, float(only_clicks.result()), "eval") == (
        None, "eval AUC is undefined: the eval split has only clicks (no act=0 rows)")
    both = tf.keras.metrics.AUC(from_logits=True)
    both.update_state([1, 0, 1, 0], [2.0, -1.0, 0.5, 1.0])
    value, note = defined_auc(both, float(both.result()), "eval")
    assert note is None and value == pytest.approx(0.75, abs=0.01)  # 3 of the 4 pairs ordered right



def _example_of(row: dict):
    import tensorflow as tf

    ex = tf.train.Example()
    for key, values in row.items():
        feature = ex.features.feature[key]
        if isinstance(values[0], int):
            feature.int64_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(v.encode() for v in values)
    return ex


def _write_eval_split(tmp_path, rows: list[dict]):
    """An Examples artifact whose eval split holds `rows`, in that order."""
    import tensorflow as tf
    from tfx.types.standard_artifacts import Examples

    examples = Examples()
    examples.uri = str(tmp_path)
    examples.split_names = '["eval"]'
    (tmp_path / "Split-eval").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(tmp_path / "Split-eval" / "data.gz"), "GZIP") as w:
        for row in rows:
            w.write(_example_of(row).SerializeToString())
    return examples


def test_each_users_query_is_its_earliest_click_whatever_the_row_order(tmp_path):
    """u1 clicked twice: with p1 read (earlier) and with p9, p1 read (later). u2 clicked twice with
    histories of one item each: a tie, broken by the smallest sha256 of the row serialized with its
    features sorted, the same in both orders. ExampleGen's order is the runner's, so the query must
    not depend on it."""
    import hashlib

    import tensorflow as tf

    from components.retrieval_evaluator import Queries
    from schema.spec import load_spec

    def row(user, post, read, client_type, act=1):
        return {"act": [act], "client_id": [user], "post_id": [post], "read_post_id": read,
                "client_type": [client_type]}

    rows = [row("u1", "p9", ["p9", "p1"], 1), row("u1", "p5", ["p1"], 2),
            row("u2", "p7", ["p3"], 1), row("u2", "p8", ["p4"], 3), row("u3", "p2", ["p3"], 1, act=0)]
    tie = min(rows[2:4], key=lambda r: hashlib.sha256(_example_of(r).SerializeToString(deterministic=True)).digest())
    for name, order in (("written", rows), ("reversed", rows[::-1])):
        q = Queries(_write_eval_split(tmp_path / name, order), load_spec(), {b"u1", b"u2"}, exclude_read=True)
        assert q.users == [b"u1", b"u2"]
        chosen = [tf.train.Example.FromString(raw).features.feature for raw in q.raw]
        assert chosen[0]["client_type"].int64_list.value == [2], name  # the shorter history
        assert chosen[1]["client_type"].int64_list.value == tie["client_type"], name
        assert q.excluded == [{b"p1"}, {tie["read_post_id"][0].encode()}], name
        assert q.relevant == [{b"p9", b"p5"}, {b"p7", b"p8"}], name


def test_sliced_recall_by_hand():
    """Three users. User 0: two relevant items of topic a (one hit) and one of b (hit); user 1: one of a
    (missed); user 2: one of b (hit). Topic a: users 0 and 1, recall (1/2 + 0) / 2 = 0.25; topic b:
    users 0 and 2, (1 + 1) / 2 = 1.0."""
    from retrieval.metrics import sliced_recall

    query = [0, 0, 0, 1, 2]
    hit = [True, False, True, False, True]
    group = np.array(["a", "a", "b", "a", "b"], object)
    out = sliced_recall(np.array(query), np.array(hit), group, samples=200)
    assert [(g["value"], g["users"], g["recall"]) for g in out] == [("a", 2, 0.25), ("b", 2, 1.0)]
    # The bootstrap over users 0 and 1 of topic a: means of resamples of {0.5, 0.0}, so within [0, 0.5].
    assert 0.0 <= out[0]["ci"][0] <= 0.25 <= out[0]["ci"][1] <= 0.5
    assert out[1]["ci"] == [1.0, 1.0]
    # A slice of one user has no interval, and says why; max_groups keeps the biggest slices (ties: by value).
    lonely = sliced_recall(np.array([0, 1, 1, 2]), np.array([True, False, True, False]),
                           np.array(["z", "y", "y", "y"], object), max_groups=1)
    assert [(g["value"], g["users"], g["recall"]) for g in lonely] == [("y", 2, 0.25)]
    lonely = sliced_recall(np.array([0, 1]), np.array([True, False]), np.array(["x", "y"], object))
    assert [(g["value"], g["users"], g["recall"]) for g in lonely] == [("x", 1, 1.0), ("y", 1, 0.0)]
    assert lonely[0]["ci"] is None and "fewer than 2 users" in lonely[0]["ci_note"]
