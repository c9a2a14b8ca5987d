"""Full-catalog retrieval metrics: Recall@K, HitRate@K and NDCG@K over users' relevant items.

A query is one user: a score for every catalog item, the set of relevant items (the user's eval
clicks) and optionally items to exclude (already read). With R the relevant set and top_K the K best
items after exclusion:
  Recall@K  = |top_K ∩ R| / |R|
  HitRate@K = 1 if top_K ∩ R is not empty
  NDCG@K    = sum over hits at rank r (1-based) of 1 / log2(r + 1), divided by the same sum for the
              ideal ranking (min(|R|, K) hits at the top)
Each is averaged over the queries.
"""
from __future__ import annotations

import numpy as np


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """[queries, k] indices of the k highest scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    # argpartition picks any of the items tied with the k-th score; the lowest indices must win.
    kth = part_scores.min(axis=1, keepdims=True)
    short = np.flatnonzero((scores == kth).sum(axis=1) > (part_scores == kth).sum(axis=1))
    for q in short:
        greater = np.flatnonzero(scores[q] > kth[q])
        part[q] = np.concatenate([greater, np.flatnonzero(scores[q] == kth[q])[:k - len(greater)]])
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def metrics_at_k(top: np.ndarray, relevant: list[set[int]], ks: list[int]) -> dict[str, float]:
    """top: [queries, >= max(ks)] ranked item indices; relevant: per query, the relevant indices."""
    out = {}
    for k in ks:
        recall, hit, ndcg = [], [], []
        for row, rel in zip(top[:, :k], relevant, strict=True):
            gains = np.array([1.0 if i in rel else 0.0 for i in row])
            hits = gains.sum()
            recall.append(hits / len(rel))
            hit.append(1.0 if hits else 0.0)
            discounts = 1.0 / np.log2(np.arange(2, len(row) + 2))
            ideal = discounts[: min(len(rel), k)].sum()
            ndcg.append(float((gains * discounts).sum() / ideal))
        out[f"recall@{k}"] = float(np.mean(recall))
        out[f"hit_rate@{k}"] = float(np.mean(hit))
        out[f"ndcg@{k}"] = float(np.mean(ndcg))
    return out


def recall_per_query(top: np.ndarray, relevant: list[set[int]], k: int) -> np.ndarray:
    """[queries] Recall@k of each query (what metrics_at_k averages)."""
    return np.array([sum(1 for i in row if i in rel) / len(rel) for row, rel in zip(top[:, :k], relevant, strict=True)])


def bootstrap_interval(values: np.ndarray, samples: int = 1000, level: float = 0.95, seed: int = 0) -> list[float]:
    """[low, high]: the percentile bootstrap interval of the mean of `values` (one per user), users
    resampled with replacement `samples` times; a fixed seed makes it the same on every run."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for b in range(0, samples, 100):  # 100 resamples at a time: memory of 100 x users
        picks = rng.integers(0, len(values), size=(min(100, samples - b), len(values)))
        means[b:b + len(picks)] = values[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def rank_catalog(scores: np.ndarray, exclude: list[set[int]], k: int) -> np.ndarray:
    """Top-k per query after removing the excluded items (their scores set to -inf)."""
    scores = scores.astype(np.float64, copy=True)
    for q, items in enumerate(exclude):
        if items:
            scores[q, list(items)] = -np.inf
    return topk_indices(scores, k)


class RunningTopK:
    """Top-k per query over a catalog that arrives in chunks: the result equals ranking the whole
    catalog at once (score, then lower index first), with memory of queries x (k + one chunk)."""

    def __init__(self, queries: int, k: int):
        self.k = k
        self.index = np.zeros((queries, 0), np.int64)
        self.score = np.zeros((queries, 0), np.float64)

    def add(self, scores: np.ndarray, offset: int) -> None:
        """scores: [queries, chunk] of the catalog items offset .. offset + chunk - 1."""
        scores = np.asarray(scores, np.float64)
        local = topk_indices(scores, self.k)
        index = np.concatenate([self.index, local + offset], axis=1)
        score = np.concatenate([self.score, np.take_along_axis(scores, local, axis=1)], axis=1)
        order = np.lexsort((index, -score), axis=1)[:, :self.k]
        self.index = np.take_along_axis(index, order, axis=1)
        self.score = np.take_along_axis(score, order, axis=1)


MIN_SLICE_USERS = 2  # a bootstrap interval of one user is that user's value: no interval below this


def sliced_recall(pair_query: np.ndarray, pair_hit: np.ndarray, pair_group: np.ndarray, samples: int = 1000,
                  max_groups: int = 20) -> list[dict]:
    """Recall@K per slice. One entry per (query, relevant item) pair: its query, whether the item is
    in the query's top K, and its slice (the user's client type, or the item's topic). A query's
    recall in a slice is the share of its relevant items of that slice that are hit; the slice's
    recall is the mean over the queries with at least one such item, with a bootstrap interval over
    those queries (None, with the reason, under MIN_SLICE_USERS). The `max_groups` slices with the
    most queries, most first (ties by value)."""
    pair_query, pair_hit, pair_group = (np.asarray(a) for a in (pair_query, pair_hit, pair_group))
    out = []
    for group in np.unique(pair_group):
        mine = pair_group == group
        queries, where = np.unique(pair_query[mine], return_inverse=True)
        hits = np.bincount(where, weights=pair_hit[mine].astype(np.float64), minlength=len(queries))
        per_query = hits / np.bincount(where, minlength=len(queries))
        entry = {"value": group.decode("utf-8", "replace") if isinstance(group, bytes) else str(group),
                 "users": int(len(queries)), "recall": float(per_query.mean())}
        if len(queries) >= MIN_SLICE_USERS:
            entry["ci"] = bootstrap_interval(per_query, samples)
        else:
            entry["ci"], entry["ci_note"] = None, f"fewer than {MIN_SLICE_USERS} users: no interval"
        out.append(entry)
    out.sort(key=lambda e: (-e["users"], e["value"]))
    return out[:max_groups]
