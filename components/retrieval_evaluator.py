"""RetrievalEvaluator: full-catalog Recall/HitRate/NDCG@K of the trained towers vs. popularity.

TFX's Evaluator scores examples one by one; retrieval quality needs every catalog item ranked for
every user. This component
  1. embeds every catalog item with the item tower (the item-vector file's items, or the items seen
     in the logs; an item's topic is its most frequent one in the logs, as ItemIndexer indexes it,
     unknown otherwise), a chunk of the catalog at a time: memory holds the queries and one chunk,
  2. embeds each eval user with the user tower, from the user's earliest clicked eval event (the
     one with the shortest history: its features describe the user before the other eval clicks;
     not the first in the files, whose order is the runner's), and takes the user's eval clicks as
     the relevant items,
  3. ranks the catalog by <user, item>, optionally excluding the posts the user has already read,
  4. ranks the same catalog for the same users by clicks in the training split (the popularity
     baseline), with the same exclusions,
with ties going to the item earlier in the catalog, and writes both metric sets to
`evaluation/metrics.json`. The model is blessed (ModelBlessing `blessed`=1, which TFX's Pusher
requires) only if the 95% bootstrap interval (over eval users) of its Recall@bless_k lift over the
baseline lies above bless_margin, there are at least min_eval_users eval users (unless allowed),
and, when auc_floor > 0, the Trainer's eval AUC is defined and reaches it.
"""
import hashlib
import heapq
import json
import os

import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation, ModelRun
from tfx.utils import path_utils

from common import signature_names
from common.outputs import OutputReport
from common.progress import RateLog
from components.artifacts import ItemVectors
from model.config import EvaluationConfig
from model.export import EXAMPLES_INPUT
from model.run_metrics import METRICS_FILE
from retrieval.metrics import RunningTopK, bootstrap_interval, metrics_at_k, recall_per_query, sliced_recall
from schema.item_vectors import IDS_FILE, VectorTable
from schema.spec import FeatureSpec
from serving.examples import ExampleBuilder

EVALUATION_FILE = "metrics.json"
PER_USER_FILE = "per_user.tsv"  # user id, then recall@k and hit_rate@k of each k: for paired comparisons
_BATCH = 1024


def _retrieval_figures(r: dict) -> str:
    key = r["bless_key"]
    return (f"{key} {r['model'][key]:.3f} vs popularity {r['popularity'][key]:.3f}: "
            f"{'blessed' if r['blessed'] else 'not blessed'}")


OUTPUT_REPORT = OutputReport("ModelEvaluation", "retrieval", read=lambda a, custom: custom(a, "retrieval"),
                             figures=_retrieval_figures, uri_key="evaluation_uri")
_SCORE_BUDGET_BYTES = 256 * 2**20  # one chunk of users x items scores in float64


def _batches(examples, split: str, spec: FeatureSpec, columns: list[str]):
    """(serialized examples, {column: numpy values}) per batch of a split; strings as 'S' arrays."""
    files = fileio.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
    parse = {k: v for k, v in spec.raw_feature_spec().items() if k in columns}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_BATCH):
        parsed = tf.io.parse_example(batch, parse)
        values = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                  for k, v in parsed.items()}
        yield batch.numpy(), {k: v.astype(bytes) if v.dtype == object else v for k, v in values.items()}


class IdTable:
    """Item ids with a click count and, per column, the item's most frequent value in the logs (ties:
    the smallest), in sorted numpy arrays (no Python object per item). The rule is ItemIndexer's
    (components/item_indexer.py, _most_frequent), so the catalog is evaluated with the features it
    is indexed with. Rows are buffered and folded in every `fold_every` rows."""

    def __init__(self, columns: list[str], fold_every: int = 1 << 20):
        self.columns, self.fold_every = columns, fold_every
        self.ids = np.zeros(0, "S1")
        self.counts = np.zeros(0, np.int64)
        self.values = {c: np.zeros(0, "S1") for c in columns}
        # per column: (item, value) pairs seen, with how often
        self._pairs = {c: (np.zeros(0, "S1"), np.zeros(0, "S1"), np.zeros(0, np.int64)) for c in columns}
        self._pending: list[tuple] = []
        self._pending_rows = 0

    def add(self, ids: np.ndarray, counts: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self._pending.append((ids, counts, values))
        self._pending_rows += len(ids)
        if self._pending_rows >= self.fold_every:
            self.fold()

    def fold(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate([self.ids, *(p[0] for p in self._pending)])
        counts = np.concatenate([self.counts, *(p[1] for p in self._pending)])
        self.ids, inverse = np.unique(ids, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.ids)).astype(np.int64)
        for c in self.columns:
            pair_ids, pair_values, pair_counts = self._pairs[c]
            new_ids = np.concatenate([p[0] for p in self._pending])
            new_values = np.concatenate([p[2][c] for p in self._pending])
            keep = new_values != b""  # an empty value is no value (a tf.Example without the feature)
            all_ids = np.concatenate([pair_ids, new_ids[keep]])
            all_values = np.concatenate([pair_values, new_values[keep]])
            all_counts = np.concatenate([pair_counts, np.ones(int(keep.sum()), np.int64)])
            # Sum the counts of equal (item, value) pairs. Sorted and compared as two columns: a joined
            # key would merge pairs whose concatenations agree ('S' arrays drop a trailing separator,
            # so (p62, 11) and (p621, 1) both became b"p6211").
            order = np.lexsort((all_values, all_ids))
            all_ids, all_values, all_counts = all_ids[order], all_values[order], all_counts[order]
            starts = np.flatnonzero(np.r_[True, (all_ids[1:] != all_ids[:-1]) | (all_values[1:] != all_values[:-1])])
            starts = starts[:len(all_ids)]  # no rows: no pair (np.r_ would still give one start)
            summed = np.add.reduceat(all_counts, starts) if len(starts) else np.zeros(0, np.int64)
            self._pairs[c] = (all_ids[starts], all_values[starts], summed)
            self.values[c] = self._most_frequent(*self._pairs[c])
        self._pending, self._pending_rows = [], 0

    def _most_frequent(self, pair_ids, pair_values, pair_counts) -> np.ndarray:
        """Per id of the table: its most frequent value, ties going to the smallest; b"" if none."""
        order = np.lexsort((pair_values, -pair_counts, pair_ids))  # by id, then count desc, then value
        ids, values = pair_ids[order], pair_values[order]
        first = np.ones(len(ids), bool)
        first[1:] = ids[1:] != ids[:-1]
        best_ids, best_values = ids[first], values[first]
        out = np.zeros(len(self.ids), dtype=best_values.dtype if len(best_values) else "S1")
        pos = np.searchsorted(self.ids, best_ids)
        out[pos] = best_values
        return out

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in the table, found) for each id."""
        pos = np.searchsorted(self.ids, ids)
        pos[pos == len(self.ids)] = 0
        return pos, (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)


def scan_logs(examples, spec: FeatureSpec) -> tuple[IdTable, np.ndarray]:
    """The logged items (training clicks, last item-tower features seen) and the user id of every
    clicked eval row."""
    item_cols = [c for c in _item_columns(spec) if c != spec.item_id]
    items = IdTable(item_cols)
    clicked_users = []
    for split in ("train", "eval"):
        columns = [spec.label, spec.item_id, *item_cols] + ([spec.user_id] if split == "eval" else [])
        for _, values in _batches(examples, split, spec, columns):
            clicked = values[spec.label].reshape(-1) == 1
            counts = clicked.astype(np.int64) if split == "train" else np.zeros(len(clicked), np.int64)
            items.add(values[spec.item_id].reshape(-1), counts, {c: values[c].reshape(-1) for c in item_cols})
            if split == "eval":
                clicked_users.append(values[spec.user_id].reshape(-1)[clicked])
    items.fold()
    return items, np.concatenate(clicked_users) if clicked_users else np.zeros(0, "S1")


def _item_columns(spec: FeatureSpec) -> list[str]:
    return list(dict.fromkeys(c for f in spec.tower_features("item") for c in [f.column]))


def _embed(signature, serialized: list[bytes]) -> np.ndarray:
    out = [signature(**{EXAMPLES_INPUT: tf.constant(serialized[i:i + _BATCH])})["embedding"].numpy()
           for i in range(0, len(serialized), _BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sample_users(users, n: int) -> set[bytes]:
    """The n users with the smallest sha256 of their id: the same sample whatever the row order.
    Streams: memory for n users, not for all of them."""
    smallest = heapq.nsmallest(n, ((hashlib.sha256(bytes(u)).digest(), bytes(u)) for u in users))
    return {u for _, u in smallest}


class Queries:
    """The eval users ranked: each one's earliest clicked eval row (its features describe the user
    before the other eval clicks), its clicked items and the items it had read (excluded when asked).

    ExampleGen's output order is not the logs' order (its shuffle; a distributed runner writes
    shards in any order), so "earliest" cannot be "first in the files": it is the clicked row with
    the shortest history (a history only grows), ties broken by the smallest sha256 of the row's
    canonical serialization. The same rows give the same queries in any order."""

    def __init__(self, examples, spec: FeatureSpec, users: set[bytes], exclude_read: bool):
        self.users = sorted(users)
        slot = {u: i for i, u in enumerate(self.users)}
        self.raw: list[bytes | None] = [None] * len(self.users)
        # (history length, row hash or None until a tie needs it) of each user's query row so far
        chosen: list[list | None] = [None] * len(self.users)
        relevant = [set() for _ in self.users]
        excluded = [set() for _ in self.users]
        history = spec.history_columns()
        columns = [spec.label, spec.user_id, spec.item_id, *history]
        for raw, values in _batches(examples, "eval", spec, columns):
            for i in np.flatnonzero(values[spec.label].reshape(-1) == 1):
                q = slot.get(values[spec.user_id].reshape(-1)[i])
                if q is None:
                    continue
                relevant[q].add(values[spec.item_id].reshape(-1)[i])
                read = [h for c in history for h in values[c][i] if h]
                best, take = chosen[q], False
                if best is None or len(read) < best[0]:
                    chosen[q], take = [len(read), None], True
                elif len(read) == best[0]:  # a tie: the smaller hash wins (hashes only for ties)
                    best[1] = best[1] or canonical_hash(self.raw[q])
                    mine = canonical_hash(raw[i])
                    if mine < best[1]:
                        best[1], take = mine, True
                if take:
                    self.raw[q] = raw[i]
                    excluded[q] = set(read) if exclude_read else set()
        self.relevant, self.excluded = relevant, excluded
        # (query, item id) pairs as arrays: matched against each catalog chunk without a dict per item.
        self.relevant_pairs = _pairs(relevant)
        self.excluded_pairs = _pairs(excluded)


def canonical_hash(serialized: bytes) -> bytes:
    """sha256 of a tf.Example serialized deterministically: protobuf writes a map (the features) in
    any order, so the same row can come back as different bytes."""
    example = tf.train.Example.FromString(serialized)
    return hashlib.sha256(example.SerializeToString(deterministic=True)).digest()


def _pairs(sets: list[set[bytes]]) -> tuple[np.ndarray, np.ndarray]:
    query = np.array([q for q, s in enumerate(sets) for _ in s], np.int64)
    ids = np.array([i for s in sets for i in s], bytes) if len(query) else np.zeros(0, "S1")
    return query, ids


def _in_chunk(chunk_ids: np.ndarray, pairs) -> tuple[np.ndarray, np.ndarray]:
    """(query, position in the chunk) of the pairs whose item is in the chunk."""
    query, ids = pairs
    order = np.argsort(chunk_ids)
    pos = np.searchsorted(chunk_ids, ids, sorter=order)
    pos[pos == len(chunk_ids)] = 0
    found = chunk_ids[order[pos]] == ids if len(ids) else np.zeros(0, bool)
    return query[found], order[pos[found]]


def catalog_chunks(item_vectors, source: str, items: IdTable, size: int):
    """The catalog's item ids, `size` at a time, as 'S' arrays: the item-vector file's order, or
    the logged items sorted."""
    if source == "logs":
        for s in range(0, len(items.ids), size):
            yield items.ids[s:s + size]
        return
    if source != "vectors":
        raise ValueError(f"catalog must be 'vectors' or 'logs', got '{source}'")
    chunk = []
    with fileio.open(os.path.join(item_vectors.uri, IDS_FILE), "rb") as f:
        for line in f:
            chunk.append(line.rstrip(b"\n"))
            if len(chunk) == size:
                yield np.array(chunk, bytes)
                chunk = []
    if chunk:
        yield np.array(chunk, bytes)


def slice_columns(spec: FeatureSpec) -> tuple[list[str], list[str]]:
    """(user columns, item columns) that recall is sliced by: each tower's one-value features
    (client_type; topic_id), not the ids."""
    def one_value(tower: str, id_column: str) -> list[str]:
        return [f.column for f in spec.tower_features(tower) if f.kind == "sparse" and f.column != id_column]
    return one_value("user", spec.user_id), one_value("item", spec.item_id)


def _first_value(serialized: bytes, column: str) -> str:
    feature = tf.train.Example.FromString(serialized).features.feature[column]
    values = list(feature.int64_list.value) or [v.decode("utf-8", "replace") for v in feature.bytes_list.value]
    return str(values[0]) if values else "(none)"


def recall_slices(queries: Queries, relevant_pos: list[dict[bytes, int]], tops: dict[str, np.ndarray], k: int,
                  items: IdTable, spec: FeatureSpec, samples: int) -> dict:
    """{"k", "by": {column: {"side": user|item, "groups": [{value, users, <top>, <top>_ci, ...}]}}}:
    recall@k of each ranking in `tops` (model, popularity) per user slice (the query row's value)
    and per item slice (the relevant item's value, from the logs)."""
    pair_query, pair_item, pair_pos = [], [], []
    for q, relevant in enumerate(queries.relevant):
        for item in sorted(relevant):
            pair_query.append(q)
            pair_item.append(item)
            pair_pos.append(relevant_pos[q].get(item, -1))  # -1: outside the catalog, never hit
    pair_query = np.array(pair_query, np.int64)
    in_top = {name: np.array([p >= 0 and p in row for p, row in zip(pair_pos, (sets[q] for q in pair_query),
                                                                         strict=True)])
              for name, sets in ((n, [set(r) for r in top[:, :k]]) for n, top in tops.items())}
    user_cols, item_cols = slice_columns(spec)
    groups = {c: ("user", np.array([_first_value(raw, c) for raw in queries.raw], object)[pair_query])
              for c in user_cols}
    pos, found = items.lookup(np.array(pair_item, bytes))
    for c in item_cols:
        if c in items.values:
            values = np.array([v.decode("utf-8", "replace") for v in items.values[c][pos]], object)
            groups[c] = ("item", np.where(found, values, "(not in the logs)"))
    by = {}
    for column, (side, group) in groups.items():
        merged: dict[str, dict] = {}
        for name, hits in in_top.items():
            for entry in sliced_recall(pair_query, hits, group, samples):
                row = merged.setdefault(entry["value"], {"value": entry["value"], "users": entry["users"]})
                row[name], row[f"{name}_ci"] = entry["recall"], entry["ci"]
                if "ci_note" in entry:
                    row["ci_note"] = entry["ci_note"]
        by[column] = {"side": side, "groups": list(merged.values())}
    return {"k": k, "by": by}


def evaluate(model_dir: str, items: IdTable, clicked_users: np.ndarray, examples, item_vectors,
             spec: FeatureSpec, ks: list[int], exclude_read: bool, catalog_source: str,
             max_users: int = 0, slice_k: int | None = None, samples: int = 1000) -> dict:
    """Metrics of the model and of the popularity baseline (training clicks) on the same queries:
    every eval user with a click, or the max_users of them with the smallest id hashes. Each metric's
    95% bootstrap interval over the users (model_ci, popularity_ci); with slice_k, recall@slice_k
    per slice (recall_slices).

    The catalog streams through in chunks: each chunk is embedded, scored against every query and
    folded into a running top-k, so memory holds the queries, not the catalog."""
    eval_users = np.unique(clicked_users)
    if not len(eval_users):
        raise ValueError("the eval split has no clicked rows: nothing to evaluate retrieval on")
    users = sample_users(eval_users, max_users) if max_users and len(eval_users) > max_users \
        else {bytes(u) for u in eval_users}
    queries = Queries(examples, spec, users, exclude_read)
    model = tf.saved_model.load(model_dir)
    # Content by value, from the run's vector file (what the item store is seeded with).
    table = VectorTable.load(item_vectors.uri)
    builder = ExampleBuilder(spec, table)
    user_vectors = _embed(model.signatures[signature_names.USER], [builder.with_content(x) for x in queries.raw])
    item_tower = model.signatures[signature_names.ITEM + signature_names.RAW]
    accepted = set(item_tower.structured_input_signature[1])  # a served version of an earlier format too
    item_content = [f.name for f in spec.tower_features("item") if f.kind == "pretrained" and f.name in accepted]
    kmax, n = max(ks), len(queries.users)
    most_excluded = max((len(e) for e in queries.excluded), default=0)
    top_model, top_pop = RunningTopK(n, kmax), RunningTopK(1, kmax + most_excluded)
    relevant_index = [set() for _ in range(n)]
    relevant_pos: list[dict[bytes, int]] = [{} for _ in range(n)]  # relevant item id -> catalog index
    excluded_index = [set() for _ in range(n)]
    item_cols = items.columns
    chunk_size = min(64 * _BATCH, max(_BATCH, _SCORE_BUDGET_BYTES // (8 * max(1, n))))
    offset = 0
    progress = RateLog("RetrievalEvaluator ranking the catalog", "items")
    for ids in catalog_chunks(item_vectors, catalog_source, items, chunk_size):
        pos, found = items.lookup(ids)
        # The raw-tensor signature: no tf.Example per item. An item the logs never showed gets ""
        # for its other features, as a tf.Example without them would.
        raw = {spec.item_id: ids, **{c: np.where(found, items.values[c][pos], b"") for c in item_cols}}
        for name in item_content:
            raw[name] = table.vectors([i.decode() for i in ids])
        vectors = item_tower(**{k: tf.constant(v) for k, v in raw.items()})["embedding"].numpy()
        scores = (user_vectors @ vectors.T).astype(np.float64)
        q, j = _in_chunk(ids, queries.excluded_pairs)
        scores[q, j] = -np.inf
        for qi, ji in zip(q, j, strict=True):
            excluded_index[qi].add(offset + int(ji))
        for qi, ji in zip(*_in_chunk(ids, queries.relevant_pairs), strict=True):
            relevant_index[qi].add(offset + int(ji))
            relevant_pos[qi][bytes(ids[ji])] = offset + int(ji)
        top_model.add(scores, offset)
        top_pop.add(np.where(found, items.counts[pos], 0)[None, :], offset)
        offset += len(ids)
        progress.update(offset)
    catalog_items = offset

    # Popularity ranks every query the same way but for its exclusions: the best items not
    # excluded, then (as -inf scores would, by index) the excluded ones.
    best = top_pop.index[0]
    popularity = np.array([([i for i in best if i not in ex] + sorted(ex))[:kmax] for ex in excluded_index],
                          np.int64).reshape(n, -1)

    # Recall is over all relevant items, also those outside the catalog (they can never be hit).
    sizes = [len(r) for r in queries.relevant]
    full = [rel | {-(j + 1) for j in range(size - len(rel))} for rel, size in zip(relevant_index, sizes, strict=True)]
    tops = {"model": top_model.index, "popularity": popularity}
    intervals = {f"{name}_ci": {f"recall@{k}": bootstrap_interval(recall_per_query(top, full, k), samples)
                                for k in ks} for name, top in tops.items()}
    slices = recall_slices(queries, relevant_pos, tops, slice_k, items, spec, samples) if slice_k else None
    return {"model": metrics_at_k(top_model.index, full, ks), "popularity": metrics_at_k(popularity, full, ks),
            **intervals, **({"slices": slices} if slices else {}),
            "_per_user_recall": {k: recall_per_query(top_model.index, full, k) for k in ks},
            "_users": queries.users,
            "_per_user_lift": {k: recall_per_query(top_model.index, full, k) - recall_per_query(popularity, full, k)
                               for k in ks},
            "users": n, "eval_users": int(len(eval_users)), "relevant_items": int(sum(sizes)),
            "relevant_outside_catalog": int(sum(sizes) - sum(len(r) for r in relevant_index)),
            "catalog_items": catalog_items, "exclude_read": exclude_read}


def _write_per_user(path: str, users: list[bytes], recall: dict[int, np.ndarray]) -> None:
    """Each eval user's recall@k and hit@k (recall > 0): the model's side of a paired comparison
    with another model ranked on the same users (bench/movielens_quality.py)."""
    ks = sorted(recall)
    lines = ["\t".join(["user", *(f"recall@{k}" for k in ks), *(f"hit_rate@{k}" for k in ks)])]
    for i, user in enumerate(users):
        lines.append("\t".join([user.decode("utf-8", "replace"), *(f"{recall[k][i]:.6g}" for k in ks),
                                *(str(int(recall[k][i] > 0)) for k in ks)]))
    with fileio.open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def gate(result: dict, per_user_lift: np.ndarray, key: str, bless_margin: float, auc_floor: float,
         eval_auc: float | None, min_eval_users: int, allow_few_eval_users: bool, samples: int) -> list[str]:
    """The reasons not to bless (none: blessed). The lift of the model over popularity at bless_k is
    a mean over eval users; it must beat bless_margin with its whole 95% bootstrap interval, over
    at least min_eval_users users. Adds lift and lift_ci to `result`."""
    lift = result["model"][key] - result["popularity"][key]
    ci = bootstrap_interval(per_user_lift, samples)
    result.update(lift=lift, lift_ci=ci, bootstrap_samples=samples)
    reasons = []
    if not ci[0] > bless_margin:
        reasons.append(f"{key} {result['model'][key]:.4f} does not beat the popularity baseline "
                       f"{result['popularity'][key]:.4f} by more than {bless_margin} with 95% confidence "
                       f"(lift {lift:+.4f}, interval [{ci[0]:+.4f}, {ci[1]:+.4f}] over {result['users']} users)")
    if result["users"] < min_eval_users and not allow_few_eval_users:
        reasons.append(f"too few eval users: {result['users']} < min_eval_users {min_eval_users} "
                       f"(evaluation.allow_few_eval_users: true blesses anyway)")
    if auc_floor > 0:
        if eval_auc is None:
            reasons.append(f"the eval AUC is undefined, so the floor {auc_floor} cannot be checked")
        elif eval_auc < auc_floor:
            reasons.append(f"eval AUC {eval_auc:.4f} is below the floor {auc_floor}")
    return reasons


def served_version(base: str) -> tuple[int, str] | None:
    """The version TF Serving serves from base (its latest policy: the highest complete version), or None."""
    if not base or not fileio.isdir(base):
        return None
    versions = sorted((int(v.rstrip("/")) for v in fileio.listdir(base) if v.rstrip("/").isdigit()), reverse=True)
    for v in versions:
        path = os.path.join(base, str(v))
        if fileio.exists(os.path.join(path, "saved_model.pb")):
            return v, path
    return None


def compare_with_served(result: dict, candidate_recall: np.ndarray, served: dict, served_recall: np.ndarray,
                        version: int, key: str, max_regression: float, samples: int) -> list[str]:
    """The candidate against the served model on the same eval users: the reason not to bless when it
    is worse by more than max_regression with 95% confidence (the whole bootstrap interval of the
    per-user difference below -max_regression): a day's noise does not hold back a new model, a
    real regression does. Adds `served` to `result`."""
    difference = candidate_recall - served_recall
    ci = bootstrap_interval(difference, samples)
    result["served"] = {"version": version, "metrics": served["model"], "difference": float(difference.mean()),
                        "difference_ci": ci, "max_regression": max_regression}
    if ci[1] >= -max_regression:
        return []
    return [f"{key} {result['model'][key]:.4f} is worse than the served version {version}'s "
            f"{served['model'][key]:.4f} by more than max_regression {max_regression} with 95% confidence (difference "
            f"{difference.mean():+.4f}, 95% interval [{ci[0]:+.4f}, {ci[1]:+.4f}] over {len(difference)} users)"]


@component
def RetrievalEvaluator(
    model: InputArtifact[Model],
    model_run: InputArtifact[ModelRun],
    examples: InputArtifact[Examples],
    item_vectors: InputArtifact[ItemVectors],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    feature_spec: Parameter[str],
    evaluation_config: Parameter[str],
    max_regression: Parameter[float],
    served_model_base: Parameter[str] = "",
) -> None:
    """evaluation_config: the pipeline config's `evaluation:` (JSON of model.config.EvaluationConfig, the
    one place its defaults live). served_model_base: the pushed model's folder (<serving>/<model_name>);
    the version served there now is ranked on the same users and catalog; a candidate worse by more
    than max_regression with 95% confidence is not blessed."""
    cfg = EvaluationConfig(**json.loads(evaluation_config))
    spec = FeatureSpec.from_json(feature_spec)
    k_list = sorted({int(k) for k in cfg.ks} | {cfg.bless_k})
    items, clicked_users = scan_logs(examples, spec)
    result = evaluate(path_utils.serving_model_path(model.uri), items, clicked_users, examples, item_vectors, spec,
                      k_list, cfg.exclude_read, cfg.catalog, cfg.max_users, cfg.bless_k, cfg.bootstrap_samples)
    with fileio.open(os.path.join(model_run.uri, METRICS_FILE)) as f:
        eval_auc = json.load(f)["eval_auc"]  # None when undefined (one class only)
    key = f"recall@{cfg.bless_k}"
    per_user_lift = result.pop("_per_user_lift")[cfg.bless_k]
    _write_per_user(os.path.join(evaluation.uri, PER_USER_FILE), result.pop("_users"), result["_per_user_recall"])
    candidate_recall = result.pop("_per_user_recall")[cfg.bless_k]
    reasons = gate(result, per_user_lift, key, cfg.bless_margin, cfg.auc_floor, eval_auc, cfg.min_eval_users,
                   cfg.allow_few_eval_users, cfg.bootstrap_samples)
    served = served_version(served_model_base)
    if served is not None:
        version, path = served
        baseline = evaluate(path, items, clicked_users, examples, item_vectors, spec, k_list, cfg.exclude_read,
                            cfg.catalog, cfg.max_users)
        reasons += compare_with_served(result, candidate_recall, baseline, baseline["_per_user_recall"][cfg.bless_k],
                                       version, key, max_regression, cfg.bootstrap_samples)
    else:
        result["served"] = None
    result.update(blessed=not reasons, not_blessed_because=reasons, eval_auc=eval_auc, bless_key=key)
    with fileio.open(os.path.join(evaluation.uri, EVALUATION_FILE), "w") as f:
        json.dump(result, f, indent=2)
    evaluation.set_json_value_custom_property("retrieval", result)
    blessing.set_int_custom_property("blessed", int(not reasons))
    with fileio.open(os.path.join(blessing.uri, "BLESSED" if not reasons else "NOT_BLESSED"), "w") as f:
        f.write("\n".join(reasons))
