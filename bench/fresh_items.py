"""Posts published after training: add_items throughput and the time from an add call to the post's
first search hit (issue [fresh-items]).

    .venv/bin/python bench/fresh_items.py [--workdir runs/demo] [--posts 6000] [--batch 1000]
        [--latency-posts 200] [--milvus-uri http://127.0.0.1:19530]

Works on a copy of WORKDIR's Milvus Lite file (the run's pushed model read in place), so the run stays
as it was. Posts are synthetic: a random vector of the item store's size each, a topic drawn from the
stored ones. The model is loaded and one post added before anything is timed.

- throughput: --posts posts through `retrieval.catalog.add_posts` (the code of `retrieval.add_items`:
  the item tower of the serving generation's version in this process, the item store, the
  generation; it returns once every post is searchable), in calls of --batch posts: posts/s.
- add to first hit: --latency-posts posts added one by one; for each, the seconds from the start of the
  add call until a search (its own item vector, k 1, filtered on its id) returns it: p50, p99, max.
With --milvus-uri the same runs against a Milvus server too: the copy's item store and a generation
are written there first (alias bench_fresh).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from common.quiet import quiet  # noqa: E402

quiet(False)


def _posts(rng, n: int, dim: int, topics: list[str], tag: str):
    from retrieval.index import Batch

    return Batch([f"{tag}-{i}" for i in range(n)], {"topic_id": [topics[i % len(topics)] for i in range(n)]},
                 rng.normal(size=(n, dim)).astype(np.float32))


def measure(index, store, towers, vocabulary, spec, args, where: str) -> dict:
    from retrieval.catalog import add_posts, embed_posts
    from retrieval.index import Batch
    from serving.examples import ExampleBuilder

    builder = ExampleBuilder(spec, store)
    rng = np.random.default_rng(0)
    topics = sorted({t for b in store.scan() for t in b.scalars["topic_id"] if t}) or [""]
    add_posts(index, store, towers.item, vocabulary, builder, spec, _posts(rng, 1, store.dim, topics, "warmup"))
    started = time.perf_counter()
    for start in range(0, args.posts, args.batch):
        add_posts(index, store, towers.item, vocabulary, builder, spec,
                  _posts(rng, min(args.batch, args.posts - start), store.dim, topics, f"t{start}"))
    seconds = time.perf_counter() - started
    latencies = []
    for i in range(args.latency_posts):
        post = _posts(rng, 1, store.dim, topics, f"l{i}")
        t0 = time.perf_counter()
        result = add_posts(index, store, towers.item, vocabulary, builder, spec, post)
        vector = embed_posts(towers.item, builder, spec, Batch(post.ids, post.scalars, post.vectors),
                             result["model_version"])
        while not index.search(vector, 1, filters={spec.item_id: post.ids}, generation=result["generation"])[0]:
            pass
        latencies.append(time.perf_counter() - t0)
    ms = np.asarray(latencies) * 1000
    out = {"where": where, "dim": store.dim, "posts": args.posts, "batch": args.batch,
           "posts_per_second": round(args.posts / seconds), "stored": store.count(),
           "first_hit_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                            "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(ms.max()), 1),
                            "n": len(ms)}}
    print(out, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(REPO, "runs", "demo"))
    p.add_argument("--posts", type=int, default=6000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--latency-posts", type=int, default=200)
    p.add_argument("--milvus-uri", default=None, help="also against this Milvus server")
    args = p.parse_args()

    from retrieval.backends import open_index
    from retrieval.catalog import ModelVocabulary, index_store
    from retrieval.index import IndexConfig
    from retrieval.item_store import ItemStore
    from retrieval.recall import SavedModelTowers
    from schema.spec import load_spec
    from serving.examples import ExampleBuilder

    spec = load_spec()
    source = os.path.join(args.workdir, "milvus.db")
    if not os.path.exists(source):
        raise SystemExit(f"no {source}: run the pipeline first (make demo)")
    with tempfile.TemporaryDirectory(prefix="fresh-bench-") as tmp:
        shutil.copy(source, os.path.join(tmp, "milvus.db"))
        lite = IndexConfig(uri=os.path.join(tmp, "milvus.db"))
        index = open_index(lite)
        store = ItemStore(lite, spec.item_id, client=index.client)
        model = os.path.join(args.workdir, "serving", "dssm")
        towers = SavedModelTowers(model)
        _, version = index.generation()
        print(f"{os.cpu_count()} CPUs; {args.workdir}: {store.count():,} stored posts of {store.dim} values, "
              f"model version {version}", flush=True)
        vocabulary = ModelVocabulary(model, spec)
        results = [measure(index, store, towers, vocabulary, spec, args, "Milvus Lite")]
        if args.milvus_uri:
            server = IndexConfig(uri=args.milvus_uri, alias="bench_fresh")
            remote = open_index(server)
            remote_store = ItemStore(server, spec.item_id, client=remote.client)
            if remote_store.exists:
                remote.client.drop_collection(remote_store.name)
                remote_store = ItemStore(server, spec.item_id, client=remote.client)
            remote_store.ensure(store.dim, store.columns)
            for batch in store.scan():
                remote_store.upsert(batch)
            index_store(remote, remote_store, towers.item, vocabulary, ExampleBuilder(spec, remote_store), spec,
                        version)
            results.append(measure(remote, remote_store, towers, vocabulary, spec, args,
                                   f"Milvus server {args.milvus_uri}"))
        for r in results:
            hit = r["first_hit_ms"]
            print(f"{r['where']}: {r['posts_per_second']:,} posts/s ({r['dim']}-d, calls of {r['batch']}); add to "
                  f"first hit p50 {hit['p50']} ms, p99 {hit['p99']} ms, max {hit['max']} ms")


if __name__ == "__main__":
    main()
