"""Distributed training: two workers on loopback under MultiWorkerMirroredStrategy (TF_CONFIG)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, free_port, holding_the_shared_run, signature_specs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 30



@pytest.fixture(scope="module")
def two_workers(runs, tmp_path_factory):
    workdir = runs[0]
    out = tmp_path_factory.mktemp("distributed")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs, codes = [], []
    with holding_the_shared_run(tmp_path_factory):  # the workers read the run's metadata store
        for index in range(2):
            env = dict(os.environ, TF_USE_LEGACY_KERAS="1",
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            log = open(out / f"worker-{index}.log", "w")
            procs.append((subprocess.Popen([sys.executable, "-m", "tests.train_worker", workdir, str(out), str(STEPS),
                                             json.dumps({"early_stopping": False})],
                                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        for proc, log in procs:
            codes.append(proc.wait(timeout=600))
            log.close()
    return out, codes



def test_both_workers_finish_and_the_chief_exports_the_single_worker_signatures(two_workers, runs):
    out, codes = two_workers
    assert codes == [0, 0], [open(out / f"worker-{i}.log").read()[-3000:] for i in range(2)]
    reference = runs[1]["model_uri"]
    for suffix in ("", "-user", "-item"):
        assert signature_specs(str(out / "model" / f"Format-Serving{suffix}")) == \
            signature_specs(os.path.join(reference, f"Format-Serving{suffix}"))
    # Only the chief's export (and its warm-start weights for a later span) is kept; the other worker
    # leaves its logs beside the chief's.
    assert sorted(os.listdir(out / "model")) == ["Format-Serving", "Format-Serving-item", "Format-Serving-user",
                                                 "warm_start"]


def test_replicas_stay_in_step_and_the_pretrained_table_is_untouched(two_workers, runs):
    out, _ = two_workers
    chief = json.load(open(out / "model_run" / "metrics.json"))
    worker = json.load(open(out / "model_run-worker-1" / "metrics.json"))
    # One optimizer step per global step (not one per worker), and identical weights on both.
    assert chief["train_steps"] == worker["train_steps"] == STEPS
    assert chief["optimizer_iterations"] == worker["optimizer_iterations"] == STEPS
    assert chief["weight_sums"] == worker["weight_sums"]
    # Training figures aggregate both workers' metrics: the same on both, and an AUC is at most 1.
    assert chief["train_auc"] == worker["train_auc"] and 0.0 <= chief["train_auc"] <= 1.0
    assert chief["train_loss"] == worker["train_loss"]
    # The frozen pretrained table is the prepared file, unchanged by either worker.
    (vectors,) = glob.glob(os.path.join(runs[0], "item_vectors", "*", "vectors.npy"))
    table = np.load(vectors, allow_pickle=False)
    (pretrained,) = [k for k in chief["weight_sums"] if k.startswith("pretrained")]
    assert chief["weight_sums"][pretrained] == pytest.approx(float(table.astype(np.float64).sum()), rel=1e-9)
    assert runs[1]["training"]["weight_sums"][pretrained] == chief["weight_sums"][pretrained]


def test_epochs_train_whole_passes_over_the_training_split(runs, tmp_path, tmp_path_factory):
    """trainer.epochs = 2 at batch 1,000: 2 x ceil(rows / 1,000) steps (each pass is an epoch, validated
    after it, ending in a partial batch), the rows counted here. (Keras's optimizer counts one more
    iteration at the end of the data: train_steps must not.)"""
    import math

    import tensorflow as tf

    workdir, first, _ = runs
    graph = first["transform_graph_uri"]  # .../Transform/transform_graph/<execution>
    examples = os.path.join(os.path.dirname(os.path.dirname(graph)), "transformed_examples", os.path.basename(graph))
    files = glob.glob(os.path.join(examples, "Split-train", "*"))
    rows = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    env.pop("TF_CONFIG", None)
    with holding_the_shared_run(tmp_path_factory):  # the worker reads the run's metadata store
        proc = subprocess.run([sys.executable, "-m", "tests.train_worker", workdir, str(tmp_path), "0",
                               json.dumps({"epochs": 2, "batch_size": 1000})], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.load(open(tmp_path / "model_run" / "metrics.json"))
    assert rows == first["splits"]["train"]["written"]
    assert metrics["train_steps"] == 2 * math.ceil(rows / 1000)
    assert metrics["train_rows"] == rows
