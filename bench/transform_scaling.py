"""How Transform's cost grows with rows: wall time and peak memory at two log sizes.

    .venv/bin/python bench/transform_scaling.py [--rows 115930,1000000] [--items 100000] [--dim 768]

For each size it generates a log (datagen.synthetic) with `items` pretrained vectors of `dim`
dimensions, runs the whole pipeline (train_steps=1: the Trainer is not what is measured) in a
subprocess, samples the subprocess's resident memory every 0.2 s, and reads Transform's start and
end from the metadata store. Prints Transform seconds, rows/s and the peak RSS of the process while
Transform ran, summed over the process and its children (the process also holds TensorFlow and Beam;
the baseline before Transform is printed too). --beam-args passes Beam options to the runs.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _component_window(metadata_path: str, type_suffix: str) -> tuple[float, float]:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    store = mlmd.MetadataStore(cfg)
    types = {t.id: t.name for t in store.get_execution_types()}
    runs = [e for e in store.get_executions() if types[e.type_id].endswith(type_suffix)
            and e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    e = max(runs, key=lambda e: e.id)
    return e.create_time_since_epoch / 1000, e.last_update_time_since_epoch / 1000


def run_size(rows: int, items: int, dim: int, root: str, beam_args: str = "") -> dict:
    data = os.path.join(root, f"data_{rows}_{items}_{dim}")
    if not os.path.exists(os.path.join(data, "item_vectors.jsonl")):
        subprocess.run([sys.executable, "-m", "datagen.synthetic", "--out", data, "--train-rows", str(rows),
                        "--eval-rows", "2000", "--users", "20000", "--items", str(items), "--topics", "700",
                        "--dim", str(dim)], cwd=REPO, check=True)
    workdir = os.path.join(root, f"run_{rows}")
    subprocess.run(["rm", "-rf", workdir], check=True)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.yaml"), "w") as f:
        f.write("trainer:\n  train_steps: 1\n")
    cmd = [sys.executable, "run_pipeline.py", "local", "--workdir", workdir, "--config",
           os.path.join(workdir, "config.yaml"), "--train", os.path.join(data, "train.tsv"),
           "--eval", os.path.join(data, "eval.tsv"), "--item-embeddings", os.path.join(data, "item_vectors.jsonl"),
           "--beam-args", beam_args]
    samples: list[tuple[float, int]] = []
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
        raise SystemExit(f"pipeline failed for {rows} rows; see {workdir}/log.txt")
    start, end = _component_window(os.path.join(workdir, "metadata.sqlite"), "Transform")
    during = [kb for ts, kb in samples if start <= ts <= end]
    before = [kb for ts, kb in samples if ts < start]
    return {"rows": rows, "transform_s": round(end - start, 1), "rows_per_s": round(rows / (end - start)),
            "peak_rss_during_transform_gib": round(max(during) / 2**20, 2),
            "rss_before_transform_gib": round(before[-1] / 2**20, 2) if before else None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="115930,1000000")
    p.add_argument("--items", type=int, default=100000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--root", default="/tmp/dssm_bench_transform")
    p.add_argument("--beam-args", default="")
    a = p.parse_args()
    results = [run_size(int(r), a.items, a.dim, a.root, a.beam_args) for r in a.rows.split(",")]
    print(f"\n{'rows':>9}{'transform s':>13}{'rows/s':>9}{'peak RSS GiB':>14}{'RSS before GiB':>16}")
    for r in results:
        print(f"{r['rows']:>9}{r['transform_s']:>13}{r['rows_per_s']:>9}"
              f"{r['peak_rss_during_transform_gib']:>14}{r['rss_before_transform_gib']!s:>16}")
    if len(results) == 2:
        a_, b_ = results
        print(f"\nrows x{b_['rows'] / a_['rows']:.2f} -> Transform time x{b_['transform_s'] / a_['transform_s']:.2f}")


if __name__ == "__main__":
    main()
