"""Retrieval metrics against values worked out by hand."""
import math

import numpy as np
import pytest

from components.retrieval_metrics import metrics_at_k, rank_catalog, topk_indices


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
    from components.retrieval_metrics import RunningTopK

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


def test_id_table_counts_and_keeps_the_last_values():
    from components.retrieval_evaluator import IdTable

    rows = [(b"p3", 1, b"t1"), (b"p1", 0, b"t2"), (b"p3", 1, b"t9"), (b"p22", 1, b"t4"), (b"p1", 1, b"t5"),
            (b"p3", 0, b"t7")]
    table = IdTable(["topic_id"], fold_every=2)  # folds between batches: the merge is exercised
    for s in range(0, len(rows), 2):
        batch = rows[s:s + 2]
        table.add(np.array([r[0] for r in batch]), np.array([r[1] for r in batch]),
                  {"topic_id": np.array([r[2] for r in batch])})
    table.fold()
    assert table.ids.tolist() == [b"p1", b"p22", b"p3"]
    assert table.counts.tolist() == [1, 1, 2]
    assert table.values["topic_id"].tolist() == [b"t5", b"t4", b"t7"]
    pos, found = table.lookup(np.array([b"p3", b"p0", b"p22", b"zz"]))
    assert found.tolist() == [True, False, True, False]
    assert table.ids[pos[found]].tolist() == [b"p3", b"p22"]


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
