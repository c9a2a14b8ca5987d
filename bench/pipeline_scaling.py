"""How each component's cost grows: wall time and peak memory of the whole local pipeline at
several log sizes, with a fitted growth exponent per component.

    .venv/bin/python bench/pipeline_scaling.py [--sizes 10000,100000,1000000] [--dim 32] [--beam-args "..."]
        [--items N] [--until COMPONENT]

Transform alone on the feature issue's logs (100,000 items of 768-d vectors):
    .venv/bin/python bench/pipeline_scaling.py --sizes 115930,1000000 --items 100000 --dim 768 --until Transform

For each size n it generates a log of n rows (datagen.synthetic: 80% train, 20% eval, n/10 users)
with n pretrained item vectors of `dim` dimensions, runs `run_pipeline.py local` in a subprocess,
samples the resident memory of the process and its children every 0.2 s, and reads each
component's start and end from the metadata store. Per component it prints seconds and the peak
RSS while it ran (the process also holds TensorFlow and Beam: the RSS before the first component
is printed as the baseline), then the exponent b of seconds ~ n^b fitted by least squares over the
sizes; b <= 1 is linear or better. The Trainer runs a fixed number of steps (train_steps below):
its time measures steps, not rows.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _status(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _rss_kb(root: int) -> int:
    """Resident memory of a process and all its descendants (Beam multi-processing workers too)."""
    parents, rss = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = _status(pid)
        if st:
            parents[int(pid)] = int(st.get("PPid", "0"))
            rss[int(pid)] = int(st.get("VmRSS", "0 kB").split()[0])
    total = 0
    for pid in rss:
        p = pid
        while p and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += rss[pid]
    return total


def _windows(metadata_path: str) -> dict[str, tuple[float, float]]:
    """{component: (start, end)} of the executions that completed, in seconds since the epoch."""
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.summary import node_names, open_store

    store = open_store(metadata_path)
    names = node_names(store)
    return {names[e.id]: (e.create_time_since_epoch / 1000, e.last_update_time_since_epoch / 1000)
            for e in store.get_executions() if e.last_known_state == metadata_store_pb2.Execution.COMPLETE}


def run_size(n: int, dim: int, root: str, train_steps: int, beam_args: str, items: int = 0, until: str = "") -> dict:
    items = items or n
    data = os.path.join(root, f"data_{n}_{dim}" + (f"_{items}" if items != n else ""))
    if not os.path.exists(os.path.join(data, "item_vectors.jsonl")):
        subprocess.run([sys.executable, "-m", "datagen.synthetic", "--out", data, "--train-rows", str(n * 4 // 5),
                        "--eval-rows", str(n // 5), "--users", str(max(300, n // 10)), "--items", str(items),
                        "--topics", "200", "--dim", str(dim)], cwd=REPO, check=True)
    workdir = os.path.join(root, f"run_{n}")
    subprocess.run(["rm", "-rf", workdir], check=True)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.yaml"), "w") as f:
        f.write(f"trainer:\n  train_steps: {train_steps}\n")
    cmd = [sys.executable, "run_pipeline.py", "local", "--workdir", workdir, "--config",
           os.path.join(workdir, "config.yaml"), "--train", os.path.join(data, "train.tsv"),
           "--eval", os.path.join(data, "eval.tsv"), "--item-embeddings", os.path.join(data, "item_vectors.jsonl"),
           "--no-serving-demo", "--beam-args", beam_args, *(["--until", until] if until else [])]
    samples: list[tuple[float, int]] = []
    started = time.time()
    with open(os.path.join(workdir, "log.txt"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

        def sample():
            while proc.poll() is None:
                samples.append((time.time(), _rss_kb(proc.pid)))
                time.sleep(0.2)

        t = threading.Thread(target=sample)
        t.start()
        proc.wait()
        t.join()
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed for {n} rows; see {workdir}/log.txt")
    windows = _windows(os.path.join(workdir, "metadata.sqlite"))
    first = min(s for s, _ in windows.values())
    before = [kb for ts, kb in samples if ts < first]
    components = {}
    for name, (start, end) in windows.items():
        during = [kb for ts, kb in samples if start <= ts <= end]
        components[name] = {"seconds": round(end - start, 2),
                            "peak_rss_gib": round(max(during) / 2**20, 2) if during else None}
    return {"rows": n, "items": n, "wall_seconds": round(time.time() - started, 1),
            "baseline_rss_gib": round(before[-1] / 2**20, 2) if before else None, "components": components}


def growth_exponent(sizes: list[int], values: list[float]) -> float | None:
    """b of value ~ size^b, least squares on logs; None when a value is too small to measure."""
    if len(sizes) < 2 or min(values) <= 0.05:
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000", help="log rows (and items) per run")
    p.add_argument("--dim", type=int, default=32, help="pretrained item vector size")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--root", default="/tmp/dssm_bench_scaling")
    p.add_argument("--beam-args", default="")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--items", type=int, default=0, help="catalog size (default: as many as log rows)")
    p.add_argument("--until", default="", help="stop after this component (run_pipeline.py --until)")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    results = []
    for n in sizes:
        results.append(run_size(n, a.dim, a.root, a.train_steps, a.beam_args, a.items, a.until))
        print(f"{n:,} rows: {results[-1]['wall_seconds']} s", flush=True)
    names = list(results[-1]["components"])
    head = "".join(f"{n:>18,}" for n in sizes)
    print(f"\n{'seconds':<26}{head}{'exponent':>10}")
    for name in names:
        secs = [r["components"].get(name, {}).get("seconds", 0.0) for r in results]
        b = growth_exponent(sizes, secs)
        print(f"{name:<26}" + "".join(f"{s:>18}" for s in secs) + f"{'-' if b is None else f'{b:.2f}':>10}")
    print(f"\n{'peak RSS GiB':<26}{head}")
    print(f"{'(baseline)':<26}" + "".join(f"{r['baseline_rss_gib']!s:>18}" for r in results))
    for name in names:
        print(f"{name:<26}" + "".join(f"{r['components'].get(name, {}).get('peak_rss_gib')!s:>18}" for r in results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
