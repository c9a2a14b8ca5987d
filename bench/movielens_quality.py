"""Retrieval quality on real data: MovieLens ml-latest-small, popularity and EASE vs. each loss.

    .venv/bin/python bench/movielens_quality.py [--source ../shared/data/ml-latest-small]
                                                [--workdir /tmp/dssm_bench_movielens] [--configs a,b,...]
                                                [--ease-only]

Converts MovieLens with datagen.movielens (per-user time split), then runs the whole pipeline once per
trainer configuration in one work directory (ExampleGen, statistics and Transform are cached after the
first run) and prints Recall@10/50/100, HR@50 and NDCG@50 of the popularity baseline and of every
configuration, from run_summary.json (RetrievalEvaluator's figures).

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
# spec's features (written as a spec file of their own)}.
CONFIGS = {
    "default": {},
    "history_mean": {"features": {"client_embed": {"reduce": "mean"}}},  # the default before position pooling
    "pointwise": {"trainer": {"loss": "pointwise"}},                      # the original design
    "inbatch_softmax": {"trainer": {"loss": "inbatch_softmax"}},
    "inbatch_1000_steps": {"trainer": {"loss": "inbatch_softmax", "train_steps": 1000}},
}
COLUMNS = ["recall@10", "recall@50", "recall@100", "hit_rate@50", "ndcg@50"]
LAMBDAS = [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]


def _spec_variant(path: str, features: dict) -> str:
    """The default feature spec with some features' keys replaced, written to path."""
    with open(DEFAULT_SPEC_PATH) as f:
        spec = yaml.safe_load(f)
    for name, keys in features.items():
        spec["features"][name].update(keys)
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


def rank_metrics(scores: np.ndarray, relevant: list[set[int]], sizes: list[int], ks: list[int]) -> dict:
    """Recall/HR/NDCG@k; relevant holds catalog indices, sizes the relevant count incl. outside the catalog."""
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
    return out


def ease_baseline(data: str, vectors_path: str, ks=(10, 50, 100)) -> tuple[dict, float, dict]:
    """(EASE's metrics on the eval split, the lambda chosen, HR@50 on the held-out click per lambda)."""
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
    first_read, relevant = {}, {}
    for r in _rows(os.path.join(data, "eval.tsv")):
        if r["act"] != "1":
            continue
        u = r["client_id"]
        if u not in first_read:
            first_read[u] = {p for p in r["read_post_id"].split(",") if p}
        relevant.setdefault(u, set()).add(r["post_id"])
    eval_users = sorted(relevant)
    x = matrix(holdout=False)
    queries = np.stack([x[row_of[u]] if u in row_of else np.zeros(len(catalog), np.float32) for u in eval_users])
    scores = ease_scores(x, queries, lam)
    for q, u in enumerate(eval_users):
        scores[q, [index[p] for p in first_read[u] if p in index]] = -np.inf
    rel = [{index[p] for p in relevant[u] if p in index} for u in eval_users]
    return rank_metrics(scores, rel, [len(relevant[u]) for u in eval_users], list(ks)), lam, tried


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default=os.path.join(os.path.dirname(REPO), "shared", "data", "ml-latest-small"))
    p.add_argument("--workdir", default="/tmp/dssm_bench_movielens")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--ease-only", action="store_true", help="only the EASE baseline (seconds, no pipeline run)")
    a = p.parse_args()
    data = os.path.join(a.workdir, "data")
    if not os.path.exists(os.path.join(data, "eval.tsv")):
        subprocess.run([sys.executable, "-m", "datagen.movielens", "--source", a.source, "--out", data],
                       cwd=REPO, check=True)
    ease, lam, tried = ease_baseline(data, os.path.join(a.source, "item_embeddings.jsonl.gz"))
    print(f"EASE: lambda {lam:g} chosen by HR@50 on each user's held-out last training click "
          + json.dumps({f"{k:g}": round(v, 4) for k, v in tried.items()}), flush=True)
    print("EASE", json.dumps({k: round(ease[k], 4) for k in COLUMNS}), flush=True)
    rows = {}
    for name in ([] if a.ease_only else a.configs.split(",")):
        cfg = os.path.join(a.workdir, f"{name}.yaml")
        config = {"trainer": CONFIGS[name].get("trainer", {}), "evaluation": {"catalog": "vectors"}}
        if "features" in CONFIGS[name]:
            config["feature_spec"] = _spec_variant(os.path.join(a.workdir, f"{name}.spec.yaml"),
                                                   CONFIGS[name]["features"])
        with open(cfg, "w") as f:
            json.dump(config, f)  # JSON is YAML
        run = subprocess.run([sys.executable, "run_pipeline.py", "local", "--workdir", os.path.join(a.workdir, "run"),
                              "--config", cfg, "--train", os.path.join(data, "train.tsv"),
                              "--eval", os.path.join(data, "eval.tsv"),
                              "--item-embeddings", os.path.join(a.source, "item_embeddings.jsonl.gz")],
                             cwd=REPO, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
        with open(os.path.join(a.workdir, "run", "run_summary.json")) as f:
            summary = json.load(f)
        rows.setdefault("popularity", summary["retrieval"]["popularity"])
        rows[name] = {**summary["retrieval"]["model"], "eval_auc": summary["training"]["eval_auc"]}
        print(name, json.dumps({k: round(rows[name][k], 4) for k in COLUMNS}), flush=True)
    print(f"\n{'':<20}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'HR@50 x pop':>13}")
    rows[f"EASE (lambda {lam:g})"] = ease
    pop = rows["popularity"]["hit_rate@50"] if "popularity" in rows else float("nan")
    for name, m in rows.items():
        print(f"{name:<20}" + "".join(f"{m[c]:>12.4f}" for c in COLUMNS) + f"{m['hit_rate@50'] / pop:>13.2f}")


if __name__ == "__main__":
    main()
