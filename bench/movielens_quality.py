"""Retrieval quality on real data: MovieLens ml-latest-small, popularity, EASE and SASRec vs. the
pipeline's user-tower variants.

    .venv/bin/python bench/movielens_quality.py [--source ../shared/data/ml-latest-small]
        [--workdir /tmp/dssm_bench_movielens] [--configs default,content,...] [--seeds 1024,7]
        [--ease-only] [--sasrec-epochs 30] [--fresh [--new-posts 0,10] [--slots-curve]]

--fresh: the freshness protocol (issue [fresh-items]). 20% of the movies (sha256 of the movieId mod 100
< 20) are withheld from training: their rows leave the training split, their ids leave the training
histories, their vectors leave the training vector file. After each run they are added with
`retrieval.add_items` (their vectors and first genre), and every eval user is recalled through
`retrieval.recall` (the product's own path; read posts excluded, k 50) from the user's first clicked
eval row, whose history may hold withheld movies (read after their publication). HR@50 is split by
target: a user whose eval clicks hold a withheld movie is a fresh-target user (a hit: a withheld movie
clicked in the top 50), the others warm-target users (a hit: any eval click in the top 50). Beside it,
a content kNN on the same vectors: the cosine of the mean of the user's last 20 read movies' vectors
with every movie not in training (the withheld ones), read movies excluded. --new-posts: recall's
--new-posts values measured on each run (places of the 50 kept for the best posts the model does not
know); --slots-curve: the same trade computed in this process over the run's own towers, for a quota and
for a bonus added to new posts' scores.

Converts MovieLens with datagen.movielens (per-user time split), then runs the whole pipeline once per
configuration and seed (trainer.seed) in one work directory (ExampleGen, statistics and Transform are
cached after the first run) and prints Recall@10/50/100, HR@50 and NDCG@50 of the popularity baseline
and of every configuration, from run_summary.json (RetrievalEvaluator's figures), as the mean over the
seeds with their range, the Trainer's seconds, and per-user paired bootstrap intervals (95%, users
resampled) of HR@50 differences: each configuration against EASE and against SASRec, from the
evaluator's per_user.tsv (each user's hits averaged over the seeds).

SASRec (Kang & McAuley 2018), written here in TF: trainable item embeddings (shared by the input
sequence and the output softmax), learned positions, two blocks of self-attention and feed-forward
layers over the user's rated movies in time order (padding masked), the last position's output scored
against every catalog item, softmax cross-entropy over the whole catalog on each liked training event.
The epoch kept is the best HR@50 on a validation event (each user's last liked training event, left out
of training). It is ranked by exactly the evaluator's rule: the history at the user's first clicked eval
event, its read posts excluded, the user's eval clicks relevant.

EASE (Steck 2019: the closed-form item-item model B = -P / diag(P), P = (X'X + lambda I)^-1, diag(B) = 0)
is computed here, independently of the pipeline, on the same protocol as the RetrievalEvaluator: the
training split's clicks as X over the item-vector catalog; each eval user with a click ranked by
x_u B with the posts read at its first eval click excluded, ties to the earlier catalog item; the
user's eval clicks relevant (also those outside the catalog). lambda is chosen on the training split
itself: each user's last training click held out, HR@50 on those.
"""
import argparse
import csv
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from schema.spec import DEFAULT_SPEC_PATH  # noqa: E402

# name -> {"trainer": overrides of the trainer defaults, "features": overrides of the default feature
# spec's features (written as a spec file of their own; None removes a feature)}.
ATTENTION = {"reduce": "attention", "embed_dim": 64, "heads": 2, "blocks": 2, "dropout": 0.1}
# The default until 2026-12-06: pretrained vectors only (no trainable item ids), tables started at 1.0,
# in-batch negatives only, temperature 0.1.
CONTENT = {"features": {"post_id": None, "read_post_id": None},
           "trainer": {"embedding_stddev": 1.0, "uniform_negatives": 0, "temperature": 0.1}}


def _content(features: dict | None = None, **trainer) -> dict:
    return {"features": {**CONTENT["features"], **(features or {})}, "trainer": {**CONTENT["trainer"], **trainer}}


CONFIGS = {
    # the default spec: item ids beside the pretrained vectors (both histories position-pooled), 512
    # uniform negatives, trainable tables started at 0.01, temperature 0.2 (temperature_0.2 on 2026-12-06)
    "default": {},
    "temperature_0.1": {"trainer": {"temperature": 0.1}},                     # item_ids_pos_uniform on 2026-12-06
    "no_uniform": {"trainer": {"uniform_negatives": 0}},                      # in-batch negatives only
    "uniform_2048": {"trainer": {"uniform_negatives": 2048}},
    "dropout": {"trainer": {"dropout": 0.2}},                                 # after each hidden layer
    "temperature_0.05": {"trainer": {"temperature": 0.05}},                   # softmax over cosine / 0.05
    "content": _content(),                                                    # `position` before 2026-12-06
    "content_uniform": _content(uniform_negatives=512),                       # `uniform` before 2026-12-06
    "attention": _content({"client_embed": ATTENTION}),                       # self-attention over the history
    "history_mean": _content({"client_embed": {"reduce": "mean"}}),           # the original design's mean
    "pointwise": {"trainer": {"loss": "pointwise", "uniform_negatives": 0}},  # the original design's loss
    "inbatch_softmax": {"trainer": {"loss": "inbatch_softmax"}},
}
# Cold start (trainer.id_dropout): a share of the item ids hidden each training step.
for _rate in (0.1, 0.2, 0.3, 0.5, 0.7):
    CONFIGS[f"id_dropout_{_rate}"] = {"trainer": {"id_dropout": _rate}}
CONFIGS["no_id_dropout"] = {"trainer": {"id_dropout": 0.0}}
COLUMNS = ["recall@10", "recall@50", "recall@100", "hit_rate@50", "ndcg@50"]
LAMBDAS = [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]


def _spec_variant(path: str, features: dict) -> str:
    """The default feature spec with some features' keys replaced (features added; None: removed), written
    to path."""
    with open(DEFAULT_SPEC_PATH) as f:
        spec = yaml.safe_load(f)
    for name, keys in features.items():
        if keys is None:
            del spec["features"][name]
        else:
            spec["features"].setdefault(name, {}).update(keys)
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def _catalog(vectors_path: str) -> list[str]:
    with gzip.open(vectors_path, "rt") if vectors_path.endswith(".gz") else open(vectors_path) as f:
        return [json.loads(line)["post_id"] for line in f if line.strip()]


def _rows(path: str):
    with open(path, newline="") as f:
        yield from csv.DictReader(f, delimiter="\t")


def ease_scores(x: np.ndarray, queries: np.ndarray, lam: float) -> np.ndarray:
    """queries @ B. An item nobody clicked has an all-zero column in X, so its row and column of B
    are zero: B is solved over the clicked items only (the same scores, a smaller inverse)."""
    active = np.flatnonzero(x.any(axis=0))
    xa = x[:, active].astype(np.float64)
    gram = xa.T @ xa
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    scores = np.zeros((len(queries), x.shape[1]), np.float64)
    scores[:, active] = queries[:, active].astype(np.float64) @ b
    return scores


def rank_metrics(scores: np.ndarray, relevant: list[set[int]], sizes: list[int], ks: list[int],
                 per_user: dict | None = None) -> dict:
    """Recall/HR/NDCG@k; relevant holds catalog indices, sizes the relevant count incl. outside the catalog.
    per_user: filled with {metric: [one value per query]}."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :max(ks)]
    out = {}
    for k in ks:
        rec, hit, ndcg = [], [], []
        for row, rel, size in zip(order[:, :k], relevant, sizes, strict=True):
            gains = np.array([1.0 if i in rel else 0.0 for i in row])
            rec.append(gains.sum() / size)
            hit.append(float(gains.any()))
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            ndcg.append(float((gains * disc).sum() / disc[:min(size, k)].sum()))
        out[f"recall@{k}"], out[f"hit_rate@{k}"], out[f"ndcg@{k}"] = map(lambda v: float(np.mean(v)), (rec, hit, ndcg))
        if per_user is not None:
            per_user.update({f"recall@{k}": rec, f"hit_rate@{k}": hit, f"ndcg@{k}": ndcg})
    return out


class EvalQueries:
    """The evaluator's queries on the converted data: each eval user with a click, the read posts of its
    first clicked eval row (most recent first), and its eval clicks."""

    def __init__(self, data: str, catalog: list[str]):
        self.index = {p: i for i, p in enumerate(catalog)}
        first_read, relevant = {}, {}
        for r in _rows(os.path.join(data, "eval.tsv")):
            if r["act"] != "1":
                continue
            u = r["client_id"]
            if u not in first_read:
                first_read[u] = [p for p in r["read_post_id"].split(",") if p]
            relevant.setdefault(u, set()).add(r["post_id"])
        self.users = sorted(relevant)
        self.read = [first_read[u] for u in self.users]
        self.relevant = [{self.index[p] for p in relevant[u] if p in self.index} for u in self.users]
        self.sizes = [len(relevant[u]) for u in self.users]

    def metrics(self, scores: np.ndarray, ks=(10, 50, 100)) -> tuple[dict, dict[str, float]]:
        """(metrics, {user: HR@50}) of scores [users, catalog], each user's read posts excluded."""
        scores = scores.astype(np.float64, copy=True)
        for q, read in enumerate(self.read):
            scores[q, [self.index[p] for p in read if p in self.index]] = -np.inf
        per_user: dict = {}
        out = rank_metrics(scores, self.relevant, self.sizes, list(ks), per_user)
        return out, dict(zip(self.users, per_user["hit_rate@50"], strict=True))


def ease_baseline(data: str, vectors_path: str, ks=(10, 50, 100)) -> tuple[dict, float, dict, dict]:
    """(EASE's metrics on the eval split, the lambda chosen, HR@50 on the held-out click per lambda,
    {user: HR@50})."""
    catalog = _catalog(vectors_path)
    index = {p: i for i, p in enumerate(catalog)}
    clicks: dict[str, list[int]] = {}
    for r in _rows(os.path.join(data, "train.tsv")):
        if r["act"] == "1" and r["post_id"] in index:
            clicks.setdefault(r["client_id"], []).append(index[r["post_id"]])
    users = sorted(clicks)
    row_of = {u: i for i, u in enumerate(users)}

    def matrix(holdout: bool) -> np.ndarray:
        x = np.zeros((len(users), len(catalog)), np.float32)
        for u, items in clicks.items():
            x[row_of[u], items[:-1] if holdout else items] = 1.0
        return x

    # lambda: each user's last training click held out (users with at least two clicks).
    x_fit = matrix(holdout=True)
    val_users = [u for u in users if len(clicks[u]) >= 2]
    val_rows = [row_of[u] for u in val_users]
    tried = {}
    for lam in LAMBDAS:
        scores = ease_scores(x_fit, x_fit[val_rows], lam)
        scores[x_fit[val_rows] > 0] = -np.inf  # already clicked
        tried[lam] = rank_metrics(scores, [{clicks[u][-1]} for u in val_users], [1] * len(val_users), [50])[
            "hit_rate@50"]
    lam = max(tried, key=tried.get)

    # Eval: the evaluator's queries and exclusions.
    queries = EvalQueries(data, catalog)
    x = matrix(holdout=False)
    rows = np.stack([x[row_of[u]] if u in row_of else np.zeros(len(catalog), np.float32) for u in queries.users])
    metrics, per_user = queries.metrics(ease_scores(x, rows, lam), ks)
    return metrics, lam, tried, per_user


SASREC_MAXLEN = 50


def _sequence(read: list[str], index: dict[str, int]) -> list[int]:
    """A history listed most recent first -> catalog rows + 1 in time order (0 = padding; unknown ids dropped)."""
    return [index[p] + 1 for p in reversed(read[:SASREC_MAXLEN]) if p in index]


def _padded(sequences: list[list[int]]) -> np.ndarray:
    out = np.zeros((len(sequences), SASREC_MAXLEN), np.int32)
    for i, seq in enumerate(sequences):
        seq = seq[-SASREC_MAXLEN:]
        if seq:
            out[i, -len(seq):] = seq  # left padded: the latest event is the last position
    return out


def sasrec(data: str, catalog: list[str], seed: int, epochs: int = 30, patience: int = 3, dim: int = 64,
           blocks: int = 2, dropout: float = 0.2, batch: int = 128) -> tuple[dict, dict, dict]:
    """(SASRec's metrics on the eval split, {user: HR@50}, {"epoch": best, "val_hr50": ..., "seconds": ...})."""
    import time

    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    index = {p: i for i, p in enumerate(catalog)}
    by_user: dict[str, list[tuple[list[int], int]]] = {}
    for r in _rows(os.path.join(data, "train.tsv")):
        if r["act"] == "1" and r["post_id"] in index:
            by_user.setdefault(r["client_id"], []).append(
                (_sequence([p for p in r["read_post_id"].split(",") if p], index), index[r["post_id"]]))
    train, val = [], []
    for events in by_user.values():
        if len(events) >= 2:
            val.append(events[-1])  # each user's last liked training event chooses the epoch
            events = events[:-1]
        train.extend(events)
    x_train, y_train = _padded([s for s, _ in train]), np.array([t for _, t in train], np.int32)
    x_val, y_val = _padded([s for s, _ in val]), np.array([t for _, t in val], np.int32)

    n = len(catalog) + 1
    items = tf.keras.layers.Embedding(n, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(0, 0.05, seed))
    positions = tf.Variable(tf.random.normal((SASREC_MAXLEN, dim), 0, 0.05, seed=seed))
    layers = [(tf.keras.layers.MultiHeadAttention(1, dim, dropout=dropout),
               tf.keras.layers.LayerNormalization(epsilon=1e-6),
               tf.keras.layers.Dense(dim, activation="relu"), tf.keras.layers.Dense(dim),
               tf.keras.layers.LayerNormalization(epsilon=1e-6)) for _ in range(blocks)]
    drop = tf.keras.layers.Dropout(dropout, seed=seed)
    causal = tf.linalg.band_part(tf.ones((SASREC_MAXLEN, SASREC_MAXLEN), tf.bool), -1, 0)  # sees itself and before

    def encode(seq, training):
        present = tf.not_equal(seq, 0)
        x = drop(items(seq) * dim ** 0.5 + positions, training=training) * tf.cast(present, tf.float32)[..., None]
        mask = tf.logical_and(causal[None], present[:, None, :])
        for attention, norm_a, inner, outer, norm_f in layers:
            x = norm_a(x + attention(x, x, attention_mask=mask, training=training))
            x = norm_f(x + drop(outer(inner(x)), training=training))
            x = x * tf.cast(present, tf.float32)[..., None]
        return x[:, -1]  # the latest event, which attended to the whole history

    def logits(seq, training):
        return tf.matmul(encode(seq, training), items.embeddings[1:], transpose_b=True)

    optimizer = tf.keras.optimizers.Adam(1e-3)
    encode(tf.constant(x_train[:2]), False)  # builds the layers

    @tf.function(jit_compile=True)
    def step(seq, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits(seq, True)))
        variables = [items.embeddings, positions, *(v for layer in layers for part in layer
                                                    for v in part.trainable_variables)]
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    def scores_of(sequences: np.ndarray) -> np.ndarray:
        return np.concatenate([logits(tf.constant(sequences[i:i + 512]), False).numpy()
                               for i in range(0, len(sequences), 512)])

    def val_hr50() -> float:
        scores = scores_of(x_val)
        for q, seq in enumerate(x_val):
            scores[q, seq[seq > 0] - 1] = -np.inf  # the posts read before are excluded, as in the evaluator
        top = np.argsort(-scores, axis=1, kind="stable")[:, :50]
        return float(np.mean([t in row for t, row in zip(y_val, top, strict=True)]))

    started = time.time()
    rng = np.random.default_rng(seed)
    best, best_epoch, best_weights, waited = -1.0, 0, None, 0
    variables = [items.embeddings, positions, *(v for layer in layers for part in layer for v in part.weights)]
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), batch):
            step(tf.constant(x_train[order[i:i + batch]]), tf.constant(y_train[order[i:i + batch]]))
        hr = val_hr50()
        if hr > best:
            best, best_epoch, best_weights, waited = hr, epoch, [v.numpy() for v in variables], 0
        else:
            waited += 1
            if waited >= patience:
                break
    for v, value in zip(variables, best_weights, strict=True):
        v.assign(value)
    queries = EvalQueries(data, catalog)
    metrics, per_user = queries.metrics(scores_of(_padded([_sequence(r, index) for r in queries.read])))
    return metrics, per_user, {"epoch": best_epoch, "val_hr50": round(best, 4), "seconds": round(time.time() - started)}


def _per_user(summary: dict) -> dict[str, float]:
    """{user: HR@50} from the RetrievalEvaluator's per_user.tsv."""
    with open(os.path.join(summary["evaluation_uri"], "per_user.tsv")) as f:
        return {r["user"]: float(r["hit_rate@50"]) for r in csv.DictReader(f, delimiter="\t")}


def paired_interval(a: dict[str, float], b: dict[str, float]) -> tuple[float, list[float]]:
    """Mean of a - b over the users both rank, and its 95% bootstrap interval (users resampled)."""
    from retrieval.metrics import bootstrap_interval

    users = sorted(set(a) & set(b))
    difference = np.array([a[u] - b[u] for u in users])
    return float(difference.mean()), bootstrap_interval(difference, 2000)


def _mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    return {u: float(np.mean([d[u] for d in per_seed])) for u in per_seed[0]}


def _run_config(a, name: str, seed: int, data: str | None, fresh: dict | None = None) -> dict:
    cfg = os.path.join(a.workdir, f"{name}-{seed}.yaml")
    config = {"trainer": {**CONFIGS[name].get("trainer", {}), "seed": seed}, "evaluation": {"catalog": "vectors"}}
    if "features" in CONFIGS[name]:
        config["feature_spec"] = _spec_variant(os.path.join(a.workdir, f"{name}.spec.yaml"), CONFIGS[name]["features"])
    with open(cfg, "w") as f:
        json.dump(config, f)  # JSON is YAML
    train, evals = (fresh["train"], fresh["eval"]) if fresh else (os.path.join(data, "train.tsv"),
                                                                  os.path.join(data, "eval.tsv"))
    vectors = fresh["vectors"] if fresh else os.path.join(a.source, "item_embeddings.jsonl.gz")
    run = subprocess.run([sys.executable, "run_pipeline.py", "local", "--workdir", _run_dir(a, fresh),
                          "--config", cfg, "--train", train, "--eval", evals, "--allow-not-blessed",
                          "--no-serving-demo", "--item-embeddings", vectors],
                         cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} (seed {seed}) failed:\n{run.stderr[-3000:]}")
    with open(os.path.join(_run_dir(a, fresh), "run_summary.json")) as f:
        return json.load(f)


def _run_dir(a, fresh: dict | None) -> str:
    """The freshness protocol's runs have a work directory (and item store) of their own."""
    return os.path.join(a.workdir, "run_fresh" if fresh else "run")


FRESH_PERCENT = 20


def withheld(movie: str) -> bool:
    """The freshness protocol's fixed rule: a fifth of the movies, by a hash of the id."""
    return int(hashlib.sha256(movie.encode()).hexdigest(), 16) % 100 < FRESH_PERCENT


def _vectors(path: str) -> dict[str, list[float]]:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        return {(o := json.loads(line))["post_id"]: o["values"] for line in f if line.strip()}


def fresh_data(data: str, source: str, out: str) -> dict:
    """The withheld movies out of the training split, its histories and the training vector file;
    the withheld movies as add_items input. Returns the paths and counts."""
    os.makedirs(out, exist_ok=True)
    vectors = _vectors(os.path.join(source, "item_embeddings.jsonl.gz"))
    genres = {}
    with open(os.path.join(source, "movies.csv"), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            genres[r["movieId"]] = r["genres"].split("|")[0]
    paths = {k: os.path.join(out, n) for k, n in (("train", "train.tsv"), ("eval", "eval.tsv"),
                                                   ("vectors", "vectors.jsonl"), ("items", "fresh_items.jsonl"))}
    counts = {"train_rows": 0, "train_rows_removed": 0, "withheld": 0, "kept": 0}
    with open(os.path.join(data, "train.tsv")) as fin, open(paths["train"], "w") as fout:
        header = fin.readline()
        fout.write(header)
        cols = header.rstrip("\n").split("\t")
        post, read = cols.index("post_id"), cols.index("read_post_id")
        for line in fin:
            f = line.rstrip("\n").split("\t")
            if withheld(f[post]):
                counts["train_rows_removed"] += 1
                continue
            f[read] = ",".join(p for p in f[read].split(",") if p and not withheld(p))
            fout.write("\t".join(f) + "\n")
            counts["train_rows"] += 1
    with open(os.path.join(data, "eval.tsv")) as fin, open(paths["eval"], "w") as fout:
        fout.write(fin.read())
    with open(paths["vectors"], "w") as fv, open(paths["items"], "w") as fi:
        for movie, values in vectors.items():
            if withheld(movie):
                fi.write(json.dumps({"post_id": movie, "values": values, "topic_id": genres.get(movie, "")}) + "\n")
                counts["withheld"] += 1
            else:
                fv.write(json.dumps({"post_id": movie, "values": values}) + "\n")
                counts["kept"] += 1
    return {**paths, **counts}


class FreshQueries:
    """Each eval user with a click: the first clicked eval row (its line, its read movies) and the eval
    clicks; split into fresh-target users (an eval click on a withheld movie) and warm-target users."""

    def __init__(self, eval_path: str):
        with open(eval_path) as f:
            self.header = f.readline()
            cols = self.header.rstrip("\n").split("\t")
            first, clicks = {}, {}
            for line in f:
                r = dict(zip(cols, line.rstrip("\n").split("\t"), strict=True))
                if r["act"] != "1":
                    continue
                first.setdefault(r["client_id"], (line, [p for p in r["read_post_id"].split(",") if p]))
                clicks.setdefault(r["client_id"], set()).add(r["post_id"])
        self.users = sorted(clicks, key=int)
        self.line = {u: first[u][0] for u in self.users}
        self.read = {u: first[u][1] for u in self.users}
        self.clicks = clicks
        self.fresh = [u for u in self.users if any(withheld(p) for p in clicks[u])]
        self.warm = [u for u in self.users if u not in set(self.fresh)]

    def hit_rates(self, top: dict[str, list[str]]) -> dict:
        fresh = [any(withheld(p) and p in self.clicks[u] for p in top[u][:50]) for u in self.fresh]
        warm = [any(p in self.clicks[u] for p in top[u][:50]) for u in self.warm]
        return {"fresh_hr@50": float(np.mean(fresh)), "warm_hr@50": float(np.mean(warm)),
                "fresh_users": len(fresh), "warm_users": len(warm),
                "_fresh": dict(zip(self.fresh, map(float, fresh), strict=True)),
                "_warm": dict(zip(self.warm, map(float, warm), strict=True))}


def content_knn(queries: FreshQueries, vectors: dict[str, list[float]], history: int = 20,
                fresh_only: bool = True) -> dict[str, list[str]]:
    """Top 50 movies per user by cosine with the mean of its last `history` read movies' vectors: among
    the withheld movies (fresh_only: the baseline knows which are new), or among every movie."""
    fresh_ids = sorted(m for m in vectors if withheld(m) or not fresh_only)
    items = np.asarray([vectors[m] for m in fresh_ids], np.float64)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    top = {}
    for u in queries.users:
        read = [p for p in queries.read[u][:history] if p in vectors]
        if not read:
            top[u] = []
            continue
        mean = np.mean([vectors[p] for p in read], axis=0)
        scores = items @ (mean / max(np.linalg.norm(mean), 1e-12))
        excluded = set(queries.read[u])
        order = np.argsort(-scores, kind="stable")
        top[u] = [fresh_ids[i] for i in order if fresh_ids[i] not in excluded][:50]
    return top


def recall_through_product(workdir: str, queries: FreshQueries, items_path: str,
                           new_posts: list[int]) -> tuple[dict[int, dict], dict]:
    """add_items with the withheld movies, then retrieval.recall for every eval user, once per value of
    --new-posts: {new_posts: {user: top 50}}."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    added = subprocess.run([sys.executable, "-m", "retrieval.add_items", "--workdir", workdir, "--items", items_path],
                           cwd=REPO, capture_output=True, text=True, env=env)
    if added.returncode != 0:
        raise SystemExit(f"add_items failed:\n{added.stderr[-3000:]}")
    info = json.loads(added.stdout.strip().splitlines()[-1])
    lines = os.path.join(workdir, "fresh_queries.tsv")
    with open(lines, "w") as f:
        f.write(queries.header + "".join(queries.line[u] for u in queries.users))
    tops = {}
    for n in new_posts:
        run = subprocess.run([sys.executable, "-m", "retrieval.recall", "--workdir", workdir, "--log-file", lines,
                              "--limit", str(len(queries.users)), "--k", "50", "--new-posts", str(n)], cwd=REPO,
                             capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise SystemExit(f"recall failed:\n{run.stderr[-3000:]}")
        tops[n] = {}
        for line in run.stdout.splitlines():
            record = json.loads(line)
            tops[n][record["user"]["client_id"]] = [h["id"] for h in record["hits"]]
    return tops, info


def fresh_slots_curve(workdir: str, queries: FreshQueries) -> list[dict]:
    """What giving new movies more room would buy, on the run's own model, store and index (in this
    process, after recall_through_product added them): every post of the store through the served
    version's item tower, every eval user through its user tower from the same query line, read posts
    excluded; then HR@50 split by target when (a) `quota` of the 50 places go to the best-scored posts
    the model does not know (the withheld movies), or (b) `bonus` is added to their cosine. `share` is
    the withheld movies' mean share of a top 50 (their share of the catalog: 19.5%)."""
    sys.path.insert(0, REPO)
    from retrieval.backends import open_index
    from retrieval.catalog import embed_posts
    from retrieval.index import IndexConfig, normalise
    from retrieval.item_store import ItemStore
    from retrieval.recall import SavedModelTowers
    from schema.spec import load_spec
    from serving.examples import ExampleBuilder

    spec = load_spec()
    config = IndexConfig(uri=os.path.join(workdir, "milvus.db"))
    index = open_index(config)
    store = ItemStore(config, spec.item_id, client=index.client)
    try:
        towers = SavedModelTowers(os.path.join(workdir, "serving", "dssm"))
        _, version = index.generation()
        items, parts = [], []
        builder = ExampleBuilder(spec, store)
        for batch in store.scan():
            items += batch.ids
            parts.append(embed_posts(towers.item, builder, spec, batch, version))
        users = ExampleBuilder(spec, store, tower="user")
        lines = [users.from_log_line(queries.line[u]) for u in queries.users]
        user_vectors = np.concatenate([towers(lines[s:s + 256], version) for s in range(0, len(lines), 256)])
    finally:
        from milvus_lite.server_manager import server_manager_instance

        store.close()
        index.close()
        # This process's Lite server would hold the file on (stale) while the next run writes it.
        server_manager_instance.release_server(config.uri)
    scores = normalise(user_vectors) @ normalise(np.concatenate(parts)).T
    row = {p: i for i, p in enumerate(items)}
    for j, u in enumerate(queries.users):
        scores[j, [row[p] for p in queries.read[u] if p in row]] = -np.inf
    new = np.asarray([withheld(p) for p in items])
    ids = np.asarray(items)
    curve = []
    for kind, values in (("quota", (0, 5, 10, 15, 20)), ("bonus", (0.05, 0.1, 0.15, 0.2))):
        for value in values:
            top, share = {}, []
            for j, u in enumerate(queries.users):
                if kind == "quota":
                    order = np.argsort(-scores[j])
                    reserved = order[new[order]][:value]
                    rest = order[~np.isin(order, reserved)][:50 - len(reserved)]
                    chosen = np.concatenate([reserved, rest])
                else:
                    chosen = np.argsort(-(scores[j] + value * new))[:50]
                top[u] = list(ids[chosen])
                share.append(new[chosen].mean())
            r = queries.hit_rates(top)
            curve.append({"kind": kind, "value": value, "fresh_hr@50": r["fresh_hr@50"],
                          "warm_hr@50": r["warm_hr@50"], "share": float(np.mean(share))})
    return curve


def fresh_main(a, seeds: list[int]) -> None:
    data = os.path.join(a.workdir, "data")
    fresh = fresh_data(data, a.source, os.path.join(a.workdir, "fresh_data"))
    print("freshness protocol: " + json.dumps({k: v for k, v in fresh.items() if not isinstance(v, str)}), flush=True)
    queries = FreshQueries(fresh["eval"])
    all_vectors = _vectors(os.path.join(a.source, "item_embeddings.jsonl.gz"))
    knn = queries.hit_rates(content_knn(queries, all_vectors))
    knn_all = queries.hit_rates(content_knn(queries, all_vectors, fresh_only=False))
    print(f"content kNN (last 20 read): fresh HR@50 {knn['fresh_hr@50']:.4f} ranking the withheld movies only, "
          f"{knn_all['fresh_hr@50']:.4f} ranking every movie (warm HR@50 {knn_all['warm_hr@50']:.4f}); "
          f"{knn['fresh_users']} fresh-target users, {knn['warm_users']} warm-target users", flush=True)
    results: dict[str, list[dict]] = {}
    for name in a.configs.split(","):
        for seed in seeds:
            summary = _run_config(a, name, seed, None, fresh)
            new_posts = [int(n) for n in a.new_posts.split(",")]
            tops, info = recall_through_product(_run_dir(a, fresh), queries, fresh["items"], new_posts)
            for n in new_posts:
                label = name if n == 0 else f"{name}, new_posts {n}"
                r = queries.hit_rates(tops[n])
                results.setdefault(label, []).append(r)
                if n:
                    print(f"{label} seed {seed}: fresh HR@50 {r['fresh_hr@50']:.4f}, warm HR@50 {r['warm_hr@50']:.4f}",
                          flush=True)
            r = queries.hit_rates(tops[new_posts[0]])
            if a.slots_curve:
                for c in fresh_slots_curve(_run_dir(a, fresh), queries):
                    print(f"  {name} seed {seed}, new movies given {c['kind']} {c['value']}: fresh HR@50 "
                          f"{c['fresh_hr@50']:.4f} ({c['fresh_hr@50'] / max(knn_all['fresh_hr@50'], 1e-12):.2f}x "
                          f"the kNN over every movie), warm HR@50 {c['warm_hr@50']:.4f}, their share of a top 50 "
                          f"{c['share']:.3f}", flush=True)
            print(f"{name} seed {seed}: fresh HR@50 {r['fresh_hr@50']:.4f} ({r['fresh_users']} users), warm HR@50 "
                  f"{r['warm_hr@50']:.4f} ({r['warm_users']} users); evaluator HR@50 (warm catalog) "
                  f"{summary['retrieval']['model']['hit_rate@50']:.4f}; add_items {info['added']} posts in "
                  f"{info['seconds']} s", flush=True)
    print(f"\nfreshness protocol, mean over seeds {seeds}, {os.cpu_count()} CPUs")
    # "x kNN": against the content kNN over every movie (the baseline: it ranks what the system ranks)
    base = max(knn_all["fresh_hr@50"], 1e-12)
    print(f"{'':<26}{'fresh HR@50':>12}{'x kNN':>8}{'warm HR@50':>12}{'fresh range':>20}{'warm range':>20}")
    print(f"{'content kNN, new only':<26}{knn['fresh_hr@50']:>12.4f}{knn['fresh_hr@50'] / base:>8.3f}"
          "   (told which movies are new: ranks the withheld ones only)")
    print(f"{'content kNN, all':<26}{knn_all['fresh_hr@50']:>12.4f}{1.0:>8.3f}{knn_all['warm_hr@50']:>12.4f}"
          "   (every movie ranked, as the system does)")
    for name, runs in results.items():
        fr, wr = [r["fresh_hr@50"] for r in runs], [r["warm_hr@50"] for r in runs]
        print(f"{name:<26}{np.mean(fr):>12.4f}{np.mean(fr) / base:>8.3f}"
              f"{np.mean(wr):>12.4f}{f'[{min(fr):.4f}, {max(fr):.4f}]':>20}{f'[{min(wr):.4f}, {max(wr):.4f}]':>20}")
    names = list(results)
    for name in names[1:]:
        for kind in ("_fresh", "_warm"):
            a_users = _mean_over_seeds([r[kind] for r in results[name]])
            b_users = _mean_over_seeds([r[kind] for r in results[names[0]]])
            diff, ci = paired_interval(a_users, b_users)
            print(f"  {name} - {names[0]} ({kind[1:]} targets): {diff:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default=os.path.join(os.path.dirname(REPO), "shared", "data", "ml-latest-small"))
    p.add_argument("--workdir", default="/tmp/dssm_bench_movielens")
    p.add_argument("--configs", default="default,content", help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--seeds", default="1024,7", help="trainer.seed of each run (and SASRec's seed)")
    p.add_argument("--sasrec-epochs", type=int, default=30)
    p.add_argument("--ease-only", action="store_true", help="only the EASE baseline (seconds, no training)")
    p.add_argument("--fresh", action="store_true", help="the freshness protocol (see the module's docstring)")
    p.add_argument("--new-posts", default="0",
                   help="with --fresh: recall's --new-posts values to measure on each run, e.g. 0,10 (the first "
                        "is the configuration's own line)")
    p.add_argument("--slots-curve", action="store_true",
                   help="with --fresh: HR@50 split by target when new movies get a quota of the 50 places or "
                        "a bonus on their score (the run's model, in this process)")
    p.add_argument("--skip-sasrec", action="store_true",
                   help="screening runs: no SASRec reference (its ~10 minutes per seed), no interval against it")
    a = p.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")]
    data = os.path.join(a.workdir, "data")
    if not os.path.exists(os.path.join(data, "eval.tsv")):
        subprocess.run([sys.executable, "-m", "datagen.movielens", "--source", a.source, "--out", data],
                       cwd=REPO, check=True)
    if a.fresh:
        return fresh_main(a, seeds)
    vectors = os.path.join(a.source, "item_embeddings.jsonl.gz")
    ease, lam, tried, ease_users = ease_baseline(data, vectors)
    print(f"EASE: lambda {lam:g} chosen by HR@50 on each user's held-out last training click "
          + json.dumps({f"{k:g}": round(v, 4) for k, v in tried.items()}), flush=True)
    print("EASE", json.dumps({k: round(ease[k], 4) for k in COLUMNS}), flush=True)
    rows: dict[str, list[dict]] = {f"EASE (lambda {lam:g})": [ease]}
    users: dict[str, list[dict]] = {"EASE": [ease_users]}
    seconds: dict[str, list[float]] = {}
    if not a.ease_only and not a.skip_sasrec:
        catalog = _catalog(vectors)
        for seed in seeds:
            metrics, per_user, info = sasrec(data, catalog, seed, a.sasrec_epochs)
            rows.setdefault("SASRec", []).append(metrics)
            users.setdefault("SASRec", []).append(per_user)
            print(f"SASRec seed {seed}: best epoch {info['epoch']} (validation HR@50 {info['val_hr50']}), "
                  f"{info['seconds']} s: " + json.dumps({k: round(metrics[k], 4) for k in COLUMNS}), flush=True)
    for name in ([] if a.ease_only else a.configs.split(",")):
        for seed in seeds:
            summary = _run_config(a, name, seed, data)
            rows.setdefault("popularity", [summary["retrieval"]["popularity"]])
            rows.setdefault(name, []).append(summary["retrieval"]["model"])
            users.setdefault(name, []).append(_per_user(summary))
            trainer = next(c for c in summary["components"] if c["component"] == "Trainer")
            seconds.setdefault(name, []).append(trainer["seconds"])
            t = summary["training"]
            print(f"{name} seed {seed}: " + json.dumps({k: round(summary['retrieval']['model'][k], 4) for k in COLUMNS})
                  + f"; Trainer {trainer['seconds']:.0f} s, {t['train_steps']} steps (best {t['best_step']})",
                  flush=True)
    print(f"\nmean over seeds {seeds} (HR@50 range in brackets), {os.cpu_count()} CPUs")
    print(f"{'':<20}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'HR@50 range':>18}{'Trainer s':>11}")
    for name, runs in rows.items():
        mean = {c: float(np.mean([r[c] for r in runs])) for c in COLUMNS}
        hr = [r["hit_rate@50"] for r in runs]
        print(f"{name:<20}" + "".join(f"{mean[c]:>12.4f}" for c in COLUMNS)
              + f"{f'[{min(hr):.4f}, {max(hr):.4f}]':>18}"
              + (f"{np.mean(seconds[name]):>11.0f}" if name in seconds else ""))
    mean_users = {name: _mean_over_seeds(per_seed) for name, per_seed in users.items()}
    print("\nHR@50 differences, per user (hits averaged over the seeds), 95% paired bootstrap interval:")
    for name in mean_users:
        if name in ("EASE", "SASRec"):
            continue
        for other in ("EASE", "SASRec"):
            if other in mean_users:
                diff, ci = paired_interval(mean_users[name], mean_users[other])
                ratio = np.mean(list(mean_users[name].values())) / np.mean(list(mean_users[other].values()))
                print(f"  {name} - {other}: {diff:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]  ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
