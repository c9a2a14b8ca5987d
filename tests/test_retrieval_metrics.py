"""Retrieval metrics against values worked out by hand."""
import math

import numpy as np
import pytest

from components.retrieval_metrics import metrics_at_k, rank_catalog, topk_indices


def test_topk_orders_by_score_then_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 1.0, 2.0, 0.0]])
    assert topk_indices(scores, 3).tolist() == [[1, 3, 2], [0, 2, 1]]


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


def test_ranking_in_chunks_equals_ranking_all_queries_at_once():
    from components.retrieval_evaluator import _rank_in_chunks

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((37, 50)).astype(np.float32)
    exclude = [set(rng.choice(50, size=q % 4, replace=False).tolist()) for q in range(37)]
    budget = 8 * 50 * 5  # five queries per chunk: eight chunks, the last one short
    chunked = _rank_in_chunks(lambda s, e: scores[s:e], 37, 50, exclude, 10, budget_bytes=budget)
    np.testing.assert_array_equal(chunked, rank_catalog(scores, exclude, 10))
    expected_first = [i for i in np.argsort(-scores[0].astype(np.float64), kind="stable") if i not in exclude[0]][:10]
    assert chunked[0].tolist() == expected_first


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
