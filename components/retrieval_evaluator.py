"""RetrievalEvaluator: full-catalog Recall/HitRate/NDCG@K of the trained towers vs. popularity.

TFX's Evaluator scores examples one by one; retrieval quality needs every catalog item ranked for
every user. This component
  1. embeds every catalog item with the item tower (the item-vector file's items, or the items seen
     in the logs; an item's topic is taken from the logs, unknown otherwise),
  2. embeds each eval user with the user tower, from the user's first clicked eval event (its
     features describe the user before the eval clicks), and takes the user's eval clicks as the
     relevant items,
  3. ranks the catalog by <user, item>, optionally excluding the posts the user has already read,
  4. ranks the same catalog for the same users by clicks in the training split (the popularity
     baseline), with the same exclusions,
and writes both metric sets to `evaluation/metrics.json`. The model is blessed (ModelBlessing
`blessed`=1, which TFX's Pusher requires) only if its Recall@bless_k beats the baseline's by more
than bless_margin and, when auc_floor > 0, the Trainer's eval AUC reaches it.
"""
import collections
import hashlib
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

from components.artifacts import ItemVectors
from components.item_vectors import IDS_FILE
from components.retrieval_metrics import metrics_at_k, rank_catalog
from components.trainer import EXAMPLES_INPUT, METRICS_FILE, SIGNATURE_ITEM, SIGNATURE_USER
from schema.spec import FeatureSpec

EVALUATION_FILE = "metrics.json"
_BATCH = 1024


def _batches(examples, split: str, spec: FeatureSpec, columns: list[str]):
    """(serialized examples, {column: dense numpy values}) per batch of a split."""
    files = fileio.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
    parse = {k: v for k, v in spec.raw_feature_spec().items() if k in columns}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(_BATCH):
        parsed = tf.io.parse_example(batch, parse)
        yield batch.numpy(), {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                              for k, v in parsed.items()}


def scan_logs(examples, spec: FeatureSpec):
    """Training clicks per item, the item-tower features of every logged item, and the clicked eval
    rows (the only ones the queries use)."""
    item_cols = _item_columns(spec)
    clicks, item_features, eval_rows = collections.Counter(), {}, []
    for split in ("train", "eval"):
        columns = [spec.label, spec.item_id, *item_cols]
        if split == "eval":
            columns += [spec.user_id, *spec.history_columns()]
        for raw, values in _batches(examples, split, spec, columns):
            for i in range(len(raw)):
                item = values[spec.item_id][i]
                item_features[item] = {c: values[c][i] for c in item_cols}
                if split == "train" and values[spec.label][i] == 1:
                    clicks[item] += 1
                if split == "eval" and values[spec.label][i] == 1:
                    eval_rows.append({**{c: values[c][i] for c in columns}, "_raw": raw[i]})
    return clicks, item_features, eval_rows


def _item_columns(spec: FeatureSpec) -> list[str]:
    return list(dict.fromkeys(c for f in spec.tower_features("item") for c in [f.column]))


def _embed(signature, serialized: list[bytes]) -> np.ndarray:
    out = [signature(**{EXAMPLES_INPUT: tf.constant(serialized[i:i + _BATCH])})["embedding"].numpy()
           for i in range(0, len(serialized), _BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _item_example(values: dict[str, bytes]) -> bytes:
    ex = tf.train.Example()
    for key, value in values.items():
        ex.features.feature[key].bytes_list.value.append(value)
    return ex.SerializeToString()


def sample_users(users: list[bytes], n: int) -> set[bytes]:
    """The n users with the smallest sha256 of their id: the same sample whatever the row order."""
    return set(sorted(users, key=lambda u: hashlib.sha256(bytes(u)).digest())[:n])


def evaluate(model_dir: str, clicks: collections.Counter, item_features: dict, eval_rows: list[dict],
             catalog_ids: list[bytes], spec: FeatureSpec, ks: list[int], exclude_read: bool,
             max_users: int = 0) -> dict:
    """Metrics of the model and of the popularity baseline (training clicks) on the same queries:
    every eval user with a click, or the max_users of them with the smallest id hashes."""
    label, user_col, item_col = spec.label, spec.user_id, spec.item_id
    history = spec.history_columns()
    index = {item: i for i, item in enumerate(catalog_ids)}

    queries = collections.OrderedDict()  # user -> (query row, relevant item ids)
    for row in eval_rows:
        if row[label] == 1:
            query, relevant = queries.setdefault(row[user_col], (row, set()))
            relevant.add(row[item_col])
    if not queries:
        raise ValueError("the eval split has no clicked rows: nothing to evaluate retrieval on")
    eval_users = len(queries)
    if max_users and eval_users > max_users:
        kept = sample_users(list(queries), max_users)
        queries = collections.OrderedDict((u, q) for u, q in queries.items() if u in kept)
    relevant = [{index[i] for i in rel if i in index} for _, rel in queries.values()]
    sizes = [len(rel) for _, rel in queries.values()]
    exclude = [set() for _ in queries]
    if exclude_read:
        exclude = [{index[h] for c in history for h in q[c] if h and h in index} for q, _ in queries.values()]

    model = tf.saved_model.load(model_dir)
    items = _embed(model.signatures[SIGNATURE_ITEM], [
        _item_example(item_features.get(i, {item_col: i})) for i in catalog_ids])
    users = _embed(model.signatures[SIGNATURE_USER], [q["_raw"] for q, _ in queries.values()])
    kmax = max(ks)
    popularity = np.array([clicks.get(i, 0) for i in catalog_ids], np.float64)
    top_model = _rank_in_chunks(lambda s, e: users[s:e] @ items.T, len(queries), len(catalog_ids), exclude, kmax)
    top_pop = _rank_in_chunks(lambda s, e: np.broadcast_to(popularity, (e - s, len(popularity))),
                              len(queries), len(catalog_ids), exclude, kmax)

    # Recall is over all relevant items, also those outside the catalog (they can never be hit).
    def metrics(top):
        full = [rel | {-(j + 1) for j in range(n - len(rel))} for rel, n in zip(relevant, sizes, strict=True)]
        return metrics_at_k(top, full, ks)

    return {"model": metrics(top_model), "popularity": metrics(top_pop),
            "users": len(queries), "eval_users": eval_users, "relevant_items": int(sum(sizes)),
            "relevant_outside_catalog": int(sum(sizes) - sum(len(r) for r in relevant)),
            "catalog_items": len(catalog_ids), "exclude_read": exclude_read}


def _rank_in_chunks(scores_of, queries: int, items: int, exclude: list[set[int]], k: int,
                    budget_bytes: int = 256 * 2**20) -> np.ndarray:
    """Top-k of every query, scoring as many queries at a time as fit the budget: the memory is
    bounded by the budget, not by users x catalog (a copy in float64 is made per chunk)."""
    step = max(1, budget_bytes // (8 * max(1, items)))
    return np.concatenate([rank_catalog(scores_of(s, min(s + step, queries)), exclude[s:s + step], k)
                           for s in range(0, queries, step)])


def catalog(item_vectors, source: str, logged_items) -> list[bytes]:
    if source == "logs":
        return sorted(logged_items)
    if source != "vectors":
        raise ValueError(f"catalog must be 'vectors' or 'logs', got '{source}'")
    with fileio.open(os.path.join(item_vectors.uri, IDS_FILE), "rb") as f:
        return [line.rstrip(b"\n") for line in f]


@component
def RetrievalEvaluator(
    model: InputArtifact[Model],
    model_run: InputArtifact[ModelRun],
    examples: InputArtifact[Examples],
    item_vectors: InputArtifact[ItemVectors],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    feature_spec: Parameter[str],
    ks: Parameter[str] = "10,50,100",
    catalog_source: Parameter[str] = "vectors",
    exclude_read: Parameter[int] = 1,
    bless_k: Parameter[int] = 50,
    bless_margin: Parameter[float] = 0.0,
    auc_floor: Parameter[float] = 0.0,
    max_users: Parameter[int] = 0,
) -> None:
    spec = FeatureSpec.from_json(feature_spec)
    k_list = sorted({int(k) for k in ks.split(",")} | {bless_k})
    clicks, item_features, eval_rows = scan_logs(examples, spec)
    ids = catalog(item_vectors, catalog_source, item_features)
    result = evaluate(path_utils.serving_model_path(model.uri), clicks, item_features, eval_rows, ids, spec,
                      k_list, bool(exclude_read), max_users)
    with fileio.open(os.path.join(model_run.uri, METRICS_FILE)) as f:
        eval_auc = json.load(f)["eval_auc"]
    key = f"recall@{bless_k}"
    lift = result["model"][key] - result["popularity"][key]
    reasons = []
    if not lift > bless_margin:
        reasons.append(f"{key} {result['model'][key]:.4f} does not beat the popularity baseline "
                       f"{result['popularity'][key]:.4f} by more than {bless_margin}")
    if auc_floor > 0 and eval_auc < auc_floor:
        reasons.append(f"eval AUC {eval_auc:.4f} is below the floor {auc_floor}")
    result.update(blessed=not reasons, not_blessed_because=reasons, eval_auc=eval_auc, bless_key=key,
                  lift=lift)
    with fileio.open(os.path.join(evaluation.uri, EVALUATION_FILE), "w") as f:
        json.dump(result, f, indent=2)
    evaluation.set_json_value_custom_property("retrieval", result)
    blessing.set_int_custom_property("blessed", int(not reasons))
    with fileio.open(os.path.join(blessing.uri, "BLESSED" if not reasons else "NOT_BLESSED"), "w") as f:
        f.write("\n".join(reasons))
