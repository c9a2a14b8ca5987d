"""Deterministic synthetic click logs in the input format, with a planted signal.

    python -m datagen.synthetic --out data/sample [--train-rows 8000 --eval-rows 2000 ...]

Writes train.tsv and eval.tsv (tab-separated, header row, the columns of the default feature spec)
and item_vectors.jsonl ({"post_id": ..., "values": [...]} per line).

The signal: every user prefers a few topics. A shown post is clicked (act=1) with a probability
that grows with the user's preference weight for the post's topic and with the similarity of the
post's vector to the mean vector of the user's read history; client_type shifts it slightly. So
follow_topic_id, all_topic_fav_7, read_post_id and the item's topic and vector all carry signal,
and a trained model must clearly beat chance.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from schema.spec import load_spec


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(out_dir: str, train_rows: int = 8000, eval_rows: int = 2000, users: int = 300,
             items: int = 1500, topics: int = 20, dim: int = 32, missing_vector_share: float = 0.02,
             seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    centroids = _unit(rng.normal(size=(topics, dim)))
    item_topic = rng.integers(0, topics, size=items)
    item_vec = _unit(centroids[item_topic] + 0.6 * rng.normal(size=(items, dim)) / np.sqrt(dim) * 4)
    items_by_topic = [np.flatnonzero(item_topic == t) for t in range(topics)]
    item_ids = [f"p{i}" for i in range(items)]
    has_vector = rng.random(items) >= missing_vector_share

    # Users: preferred topics with weights, followed topics, a 7-day topic profile, a read history.
    user_pref = []
    for _ in range(users):
        k = int(rng.integers(2, 4))
        pref = rng.choice(topics, size=k, replace=False)
        w = rng.dirichlet(np.ones(k) * 2.0)
        user_pref.append(dict(zip(pref.tolist(), w.tolist(), strict=True)))
    user_type = rng.integers(0, 2, size=users)
    user_follow, user_fav, user_hist = [], [], []
    for u in range(users):
        pref = list(user_pref[u])
        extra = rng.choice(topics, size=int(rng.integers(0, 3)), replace=False).tolist()
        user_follow.append(list(dict.fromkeys(pref + extra)))
        fav = dict(user_pref[u])
        for t in rng.choice(topics, size=2, replace=False).tolist():
            fav.setdefault(t, float(rng.uniform(0.0, 0.1)))
        user_fav.append(fav)
        n_hist = int(rng.integers(3, 30))
        hist = []
        for _ in range(n_hist):
            if rng.random() < 0.8:
                t = rng.choice(pref, p=np.array([user_pref[u][x] for x in pref]))
                hist.append(int(rng.choice(items_by_topic[t])) if len(items_by_topic[t]) else
                            int(rng.integers(items)))
            else:
                hist.append(int(rng.integers(items)))
        user_hist.append(hist)
    hist_mean = _unit(np.stack([item_vec[h].mean(axis=0) for h in user_hist]))

    def rows(n: int):
        for _ in range(n):
            u = int(rng.integers(users))
            if rng.random() < 0.5:
                t = int(rng.choice(list(user_pref[u])))
                i = int(rng.choice(items_by_topic[t])) if len(items_by_topic[t]) else int(rng.integers(items))
            else:
                i = int(rng.integers(items))
            pref_w = user_pref[u].get(int(item_topic[i]), 0.0)
            sim = float(item_vec[i] @ hist_mean[u])
            logit = -2.2 + 5.0 * pref_w + 2.5 * sim + 0.4 * user_type[u] * (item_topic[i] % 2)
            act = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
            hist = [item_ids[h] for h in reversed(user_hist[u])]  # most recent first
            yield {
                "act": str(act),
                "client_id": f"u{u}",
                "post_id": item_ids[i],
                "client_type": str(int(user_type[u])),
                "follow_topic_id": ",".join(str(t) for t in user_follow[u]),
                "all_topic_fav_7": ",".join(f"{t}:{w:.4f}" for t, w in
                                            sorted(user_fav[u].items(), key=lambda kv: -kv[1])),
                "topic_id": str(int(item_topic[i])),
                "read_post_id": ",".join(hist),
            }

    columns = list(load_spec().columns)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for name, n in (("train", train_rows), ("eval", eval_rows)):
        path = os.path.join(out_dir, f"{name}.tsv")
        positives = 0
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(columns) + "\n")
            for row in rows(n):
                positives += row["act"] == "1"
                f.write("\t".join(row[c] for c in columns) + "\n")
        counts[name] = {"rows": n, "positives": positives}
    with open(os.path.join(out_dir, "item_vectors.jsonl"), "w", encoding="utf-8") as f:
        for i in range(items):
            if has_vector[i]:
                f.write(json.dumps({"post_id": item_ids[i],
                                    "values": [round(float(v), 5) for v in item_vec[i]]}) + "\n")
    counts["items_with_vectors"] = int(has_vector.sum())
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write deterministic synthetic click logs with a planted signal.")
    p.add_argument("--out", required=True)
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--eval-rows", type=int, default=2000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--topics", type=int, default=20)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    counts = generate(a.out, a.train_rows, a.eval_rows, a.users, a.items, a.topics, a.dim, seed=a.seed)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
