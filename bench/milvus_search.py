"""Milvus Lite: indexing throughput, top-100 search latency and IVF_FLAT recall, next to numpy brute force.

    .venv/bin/python bench/milvus_search.py [--sizes 10000,100000,1000000] [--queries 200]

--uri http://HOST:19530 runs the same against a Milvus server (Lite keeps one growing segment per
collection, searched through its interim index, and inserts row by row; a server seals segments and
builds the index that was asked for).

Vectors are 128-d synthetic item vectors, L2-normalised, drawn around 2,000 cluster centres (items
cluster by topic, as the item tower's outputs do); queries are drawn the same way. For each size:
one FLAT and one IVF_FLAT generation written through retrieval.milvus.write_generation (the
pipeline's own path: column inserts in parallel, flush, index, load), then single-query top-100
searches through MilvusIndex. Recall@100 is against exact numpy search on the same vectors.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retrieval.index import IndexConfig  # noqa: E402
from retrieval.milvus import Batch, MilvusIndex, connect, normalise, write_generation  # noqa: E402

DIM, K, CENTRES = 128, 100, 2000


def synthetic(n: int, rng, centres: np.ndarray) -> np.ndarray:
    which = rng.integers(0, len(centres), n)
    return normalise(centres[which] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(DIM) * 4)


def batches(vectors: np.ndarray, size: int = 20000):
    for s in range(0, len(vectors), size):
        ids = [f"p{i}" for i in range(s, min(s + size, len(vectors)))]
        yield Batch(ids, {"topic_id": ["t"] * len(ids)}, vectors[s:s + size])


def timed_searches(item_index: MilvusIndex, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    times, found = [], []
    item_index.search(queries[:1], K)  # warm
    for q in queries:
        t = time.perf_counter()
        (hits,) = item_index.search(q[None, :], K)
        times.append(time.perf_counter() - t)
        found.append([int(h["id"][1:]) for h in hits])
    return times, found


def ms(times, p):
    return round(float(np.percentile(np.array(times) * 1000, p)), 2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists; 0 = 4 * sqrt(n)")
    p.add_argument("--nprobes", default="32,64,128", help="IVF lists searched; one row each")
    p.add_argument("--threads", type=int, default=8, help="insert requests in flight")
    p.add_argument("--index-types", default="FLAT,IVF_FLAT", help="FLAT, IVF_FLAT, HNSW (HNSW: a server only)")
    p.add_argument("--hnsw", default="16,200", help="HNSW M,efConstruction")
    p.add_argument("--efs", default="128,256,512", help="HNSW ef searched; one row each")
    p.add_argument("--batch", type=int, default=500, help="rows per insert request")
    p.add_argument("--uri", default="", help="a Milvus server (http://host:19530) instead of a Milvus Lite file")
    args = p.parse_args()
    if any(int(x) < K for x in args.efs.split(",")):
        p.error(f"--efs: HNSW searches need ef >= k ({K}); got {args.efs}")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    print(f"{'items':>9} {'index':<9} {'params':<22} {'insert/s':>9} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'recall@100':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = synthetic(n, rng, centres)
        queries = synthetic(args.queries, rng, centres)
        times, exact = [], []
        for q in queries:  # numpy brute force, one query at a time like the searches
            t = time.perf_counter()
            scores = vectors @ q
            top = np.argpartition(-scores, K)[:K]
            exact.append(top[np.argsort(-scores[top])].tolist())
            times.append(time.perf_counter() - t)
        print(f"{n:>9} {'numpy':<9} {'exact':<22} {'':>9} {'':>8} {ms(times, 50):>7} {ms(times, 99):>7} {1.0:>10.4f}")
        root = tempfile.mkdtemp(prefix="milvus-bench-")
        try:
            nlist = args.nlist or int(4 * np.sqrt(n))
            m, efc = (int(x) for x in args.hnsw.split(","))
            kinds = (("FLAT", {}, [{}]), ("IVF_FLAT", {"nlist": nlist},
                                          [{"nprobe": int(x)} for x in args.nprobes.split(",")]),
                     ("HNSW", {"M": m, "efConstruction": efc}, [{"ef": int(x)} for x in args.efs.split(",")]))
            for index_type, params, searches in (k for k in kinds if k[0] in args.index_types.split(",")):
                config = IndexConfig(uri=args.uri or os.path.join(root, "bench.db"),
                                     alias=f"bench_{index_type.lower()}", index_type=index_type,
                                     index_params=params, insert_threads=args.threads, insert_batch=args.batch)
                client = connect(config)
                cpu = time.process_time()
                done = write_generation(config, batches(vectors), "post_id", ["topic_id"], DIM, client=client)
                # what limits the inserts: this process's CPU (pymilvus building the requests; the wait
                # for the index costs next to none) against the seconds of inserting
                print(f"# {index_type}: inserts {done['insert_seconds']:.1f} s using {time.process_time() - cpu:.1f} "
                      f"s of this client's CPU; index built in {done['index_seconds']:.1f} s", flush=True)
                build = done["index_seconds"]  # on a server: until every row is indexed
                for search in searches:
                    item_index = MilvusIndex(IndexConfig(**{**config.__dict__, "search_params": search}), client=client)
                    times, found = timed_searches(item_index, queries)
                    recall = np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)])
                    shown = ",".join(f"{k}={v}" for k, v in {**done["index_params"], **search}.items()) or "-"
                    print(f"{n:>9} {index_type:<9} {shown:<22} {done['items_per_second']:>9} {build:>8.1f} "
                          f"{ms(times, 50):>7} {ms(times, 99):>7} {recall:>10.4f}", flush=True)
                if args.uri:  # a server refuses to drop a collection that an alias names
                    client.drop_alias(config.alias)
                client.drop_collection(done["collection"])
                client.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
