"""Retrieval quality on real data: MovieLens ml-latest-small, popularity vs. each loss.

    .venv/bin/python bench/movielens_quality.py [--source ../shared/data/ml-latest-small]
                                                [--workdir /tmp/dssm_bench_movielens] [--configs a,b,...]

Converts MovieLens with datagen.movielens (per-user time split), then runs the whole pipeline once per
trainer configuration in one work directory (ExampleGen, statistics and Transform are cached after the
first run) and prints Recall@10/50/100, HR@50 and NDCG@50 of the popularity baseline and of every
configuration, from run_summary.json (RetrievalEvaluator's figures).
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "pointwise": {"loss": "pointwise"},                       # the original design
    "inbatch_softmax": {"loss": "inbatch_softmax"},
    "mixed": {"loss": "mixed"},
    "inbatch_t0.1": {"loss": "inbatch_softmax", "temperature": 0.1},
    "inbatch_t0.1_1000": {"loss": "inbatch_softmax", "temperature": 0.1, "train_steps": 1000},
    "inbatch_t0.1_3000": {"loss": "inbatch_softmax", "temperature": 0.1, "train_steps": 3000},
    "mixed_t0.1_3000": {"loss": "mixed", "temperature": 0.1, "train_steps": 3000},
}
COLUMNS = ["recall@10", "recall@50", "recall@100", "hit_rate@50", "ndcg@50"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default=os.path.join(os.path.dirname(REPO), "shared", "data", "ml-latest-small"))
    p.add_argument("--workdir", default="/tmp/dssm_bench_movielens")
    p.add_argument("--configs", default=",".join(CONFIGS))
    a = p.parse_args()
    data = os.path.join(a.workdir, "data")
    if not os.path.exists(os.path.join(data, "eval.tsv")):
        subprocess.run([sys.executable, "-m", "datagen.movielens", "--source", a.source, "--out", data],
                       cwd=REPO, check=True)
    rows = {}
    for name in a.configs.split(","):
        cfg = os.path.join(a.workdir, f"{name}.yaml")
        with open(cfg, "w") as f:
            json.dump({"trainer": CONFIGS[name], "evaluation": {"catalog": "vectors"}}, f)  # JSON is YAML
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
    pop = rows["popularity"]["hit_rate@50"]
    for name, m in rows.items():
        print(f"{name:<20}" + "".join(f"{m[c]:>12.4f}" for c in COLUMNS) + f"{m['hit_rate@50'] / pop:>13.2f}")


if __name__ == "__main__":
    main()
