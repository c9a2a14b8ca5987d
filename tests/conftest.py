import contextlib
import json
import os
import subprocess
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before any TensorFlow import, as at every entry point
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from schema.spec import load_spec  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "data", "sample")
RELIABILITY_SUMMARY = os.path.join(REPO, "runs", "reliability_summary.json")


def run_local(workdir, *args, expect_ok=True, timeout=900, sample=True):
    """`run_pipeline.py local` in a subprocess: the run summary (plus its stdout), or the process;
    with --until, the partial run's summary (WORKDIR/partial/run_summary.json).
    With `sample`, --sample: the bundled sample gives the logs and vectors that `args` do not."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, "run_pipeline.py", "local", "--workdir", str(workdir),
                           *(["--sample"] if sample else []), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if not expect_ok:
        return proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    face = os.path.join(workdir, "partial") if "--until" in args else workdir  # a partial run's own summary
    with open(os.path.join(face, "run_summary.json")) as f:
        return {**json.load(f), "_stdout": proc.stdout, "_stderr": proc.stderr}


def executions_by_node(metadata_path) -> dict[str, list[str]]:
    """{pipeline node: the states of its executions, oldest first}, read from MLMD."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(metadata_path)
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(cfg)
    names = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
    return {ctx.name.split(".", 1)[1]: [names[e.last_known_state] for e in
                                        sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id)]
            for ctx in store.get_contexts_by_type("node")}


def tree_digest(path) -> dict:
    """{file relative to path: sha256} of everything under path."""
    import hashlib

    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signature_specs(saved_model_dir) -> dict:
    """{signature: ({input: (shape, dtype)}, {output: (shape, dtype)})} of a SavedModel."""
    import tensorflow as tf

    def specs(tensors):
        return {k: (v.shape.as_list(), v.dtype.name) for k, v in sorted(tensors.items())}

    model = tf.saved_model.load(str(saved_model_dir))
    return {name: (specs(fn.structured_input_signature[1]), specs(fn.structured_outputs))
            for name, fn in model.signatures.items()}


def shared_tmp(tmp_path_factory):
    """A folder all test processes of this session see: the base temp of a single pytest, or the
    parent of the xdist workers' base temps (pytest-xdist's own recipe)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The sample through the whole pipeline, then the same command again (all cached):
    (workdir, first summary, second summary). Shared by the e2e and reliability tests, and computed
    once per session: the first test process to need it runs it, under a lock; the others read it.
    A test that runs the workdir again, or reads its metadata store, holds holding_the_shared_run."""
    import shutil

    from filelock import FileLock

    root = shared_tmp(tmp_path_factory)
    done = root / "runs.json"
    with FileLock(str(root / "runs.lock")):
        if done.exists():
            return tuple(json.loads(done.read_text()))
        workdir = str(root / "e2e" / "run")
        first = run_local(workdir)  # ends with the serving demo
        first["_report_dir"] = shutil.copytree(os.path.join(workdir, "report"), os.path.join(workdir, "report-first"))
        second = run_local(workdir, "--no-serving-demo")
        done.write_text(json.dumps([workdir, first, second]))
        return workdir, first, second


@contextlib.contextmanager
def holding_the_shared_run(tmp_path_factory):
    """Held while a test runs the shared workdir again, or reads its metadata store, possibly in
    another xdist worker: SQLite refuses a read during another process's write ("database is
    locked")."""
    from filelock import FileLock

    with FileLock(str(shared_tmp(tmp_path_factory) / "runs-workdir.lock")):
        yield


def copy_pushed_run(runs, dest, tmp_path_factory) -> int:
    """dest/milvus.db (a copy of the shared run's Lite file) and dest/serving/dssm/<version> (a copy of
    the version its index was filled by): a model server or tool on dest sees exactly that version,
    whatever another test pushes into the shared run meanwhile. Returns the version."""
    import shutil

    workdir, first, _ = runs
    version = int(first["pushed_models"][0]["version"])
    with holding_the_shared_run(tmp_path_factory):  # nobody holds the Lite file while it is copied
        shutil.copy(os.path.join(workdir, "milvus.db"), os.path.join(dest, "milvus.db"))
        shutil.copytree(os.path.join(workdir, "serving", "dssm", str(version)),
                        os.path.join(dest, "serving", "dssm", str(version)))
    return version


class ReliabilityLog:
    """Every fault injected and bad input tried by the tests, with what happened.

    An entry travels in the user_properties of the report of the test (or fixture) that recorded it,
    so that under pytest-xdist the controlling process sees the entries of every worker; the
    summary is written at the end of the session."""

    def __init__(self):
        self.pending = []    # recorded in this process, not yet attached to a report
        self.collected = []  # seen in the reports (all processes' entries, in the controller)

    def record(self, category: str, fault: str, expected: str, observed: str, ok: bool, **figures):
        self.pending.append({"category": category, "fault": fault, "expected": expected,
                             "observed": observed, "ok": bool(ok), **figures})
        return ok


_RELIABILITY = ReliabilityLog()
_PROPERTY = "reliability"


@pytest.fixture(scope="session")
def reliability():
    return _RELIABILITY


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if _RELIABILITY.pending:  # a list of this report's own: item.user_properties is shared by its phases
        report.user_properties = [*report.user_properties, *((_PROPERTY, e) for e in _RELIABILITY.pending)]
        _RELIABILITY.pending.clear()


def pytest_runtest_logreport(report):
    _RELIABILITY.collected += [value for name, value in report.user_properties if name == _PROPERTY]


def pytest_terminal_summary(terminalreporter, config):
    entries = _RELIABILITY.collected
    if hasattr(config, "workerinput") or not entries:  # an xdist worker: its controller reports
        return
    failed = [e for e in entries if not e["ok"]]
    os.makedirs(os.path.dirname(RELIABILITY_SUMMARY), exist_ok=True)
    # `make test` and `make test-slow` try different faults: each run replaces its own entries only.
    tried = {(e["category"], e["fault"]) for e in entries}
    kept = []
    if os.path.exists(RELIABILITY_SUMMARY):
        with open(RELIABILITY_SUMMARY) as f:
            kept = [e for e in json.load(f)["entries"] if (e["category"], e["fault"]) not in tried]
    merged = kept + entries
    with open(RELIABILITY_SUMMARY, "w") as f:
        json.dump({"faults_and_bad_inputs": len(merged), "failures": sum(not e["ok"] for e in merged),
                   "entries": merged}, f, indent=2)
    terminalreporter.section("reliability summary")
    for e in entries:
        terminalreporter.write_line(f"{'ok  ' if e['ok'] else 'FAIL'} [{e['category']}] {e['fault']}: {e['observed']}")
    terminalreporter.write_line(f"{len(entries)} faults and bad inputs tried, {len(failed)} failures; "
                                f"written to {RELIABILITY_SUMMARY}")


# Modules that take minutes, longest first: pytest-xdist (make test) hands out whole modules in this
# order, so the long ones start at once on both workers instead of ending the run alone.
SLOW_FIRST = ["test_reliability", "test_kubeflow", "test_continuous", "test_milvus_server", "test_distributed",
              "test_portable", "test_e2e", "test_serving_abuse", "test_report", "test_input_safety", "test_setup",
              "test_components", "test_export"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(scope="session")
def spec():
    return load_spec()


def _row(act, client, post, ctype, follow, fav, topic, read):
    return {"act": act, "client_id": client, "post_id": post, "client_type": ctype,
            "follow_topic_id": follow, "all_topic_fav_7": [k for k, _ in fav],
            "all_topic_fav_7_weight": [w for _, w in fav], "topic_id": topic, "read_post_id": read}


RAW = [
    _row(1, "u1", "p2", 0, ["t1", "t2"], [("t2", 0.5), ("t3", 0.25)], "t1", ["p1", "p3"]),
    _row(0, "u2", "p9", 1, [], [], "t1", ["p9", "p1"]),
    _row(0, "u3", "p3", 0, ["t3"], [("t1", 1.0)], "t2", []),
]


@pytest.fixture(scope="session")
def tiny_transform(spec, tmp_path_factory):
    """(transformed RAW rows, TFTransformOutput) of the real preprocessing_fn on three literal rows."""
    import functools
    import tempfile

    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    from model.preprocessing import preprocessing_fn
    from schema.generate import schema_from_spec

    tmp = tmp_path_factory.mktemp("tft")
    ids_path = tmp / "item_ids.txt"
    ids_path.write_text("p1\np2\np3\n")
    config = {"feature_spec": spec.to_json(), "num_oov_buckets": 1, "item_ids_path": str(ids_path)}
    metadata = dataset_metadata.DatasetMetadata(schema_from_spec(spec))
    out_dir = str(tmp / "transform_fn")
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=tmp)):
        (data, _), transform_fn = (RAW, metadata) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    ids_path.unlink()  # the saved graph must carry its own copy of the id file
    return data, tft.TFTransformOutput(out_dir)
