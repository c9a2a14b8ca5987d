"""The Beam stages through Beam's PortableRunner: a job service and SDK workers in their own processes.

This is the protocol of the Flink, Spark and Dataflow (runner v2) runners: the pipeline is sent as
a portable proto to a job service; the service asks a worker pool for SDK harnesses, each a new
Python process. Everything the Beam code ships to them must pickle and run without the
submitting process's state.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, free_port, run_local, tree_digest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]




@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """(job endpoint, worker pool endpoint, worker pool log); both services stop at the end."""
    tmp = tmp_path_factory.mktemp("portable")
    # The pool starts each SDK worker as `python -c ...`: this environment's python must come first.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    pool_port = free_port()
    port_file = tmp / "job.port"
    logs = [open(tmp / "job.log", "w"), open(tmp / "pool.log", "w")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                          "--port", "0", "--port_file", str(port_file)], cwd=REPO, env=env,
                         stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                          "--service_port", str(pool_port)], cwd=REPO, env=env,
                         stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)]
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        assert all(p.poll() is None for p in procs), "a Beam service exited while starting"
        assert time.monotonic() < deadline, "the job service did not start within 120 s"
        time.sleep(0.5)
    yield f"localhost:{port_file.read_text().strip()}", f"localhost:{pool_port}", tmp / "pool.log"
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    for f in logs:
        f.close()


def test_beam_stages_through_the_portable_runner_equal_the_direct_runner(portable_services, runs, tmp_path):
    job, pool, pool_log = portable_services
    (tmp_path / "config.yaml").write_text("trainer:\n  train_steps: 100\n")  # only the Beam stages are compared
    beam_args = f"--runner=PortableRunner --job_endpoint={job} --environment_type=EXTERNAL --environment_config={pool}"
    portable = run_local(str(tmp_path / "run"), "--no-serving-demo", "--config", str(tmp_path / "config.yaml"),
                         "--beam-args", beam_args)
    _, direct, _ = runs
    states = {c["component"]: c["state"] for c in portable["components"]}
    assert all(s == "COMPLETE" for s in states.values()), states
    # SDK workers ran as processes of the worker pool, not in this one.
    assert "Starting worker with command" in pool_log.read_text()
    # ExampleGen and Transform: the same rows and the same vocabularies.
    assert portable["splits"] == direct["splits"]
    vocab = os.path.join("transform_fn", "assets")
    assert tree_digest(os.path.join(portable["transform_graph_uri"], vocab)) == \
        tree_digest(os.path.join(direct["transform_graph_uri"], vocab))
    # StatisticsGen: the same statistics of the raw splits.
    for split in ("train", "eval"):
        path = os.path.join("Split-" + split, "FeatureStats.pb")
        assert _stats(os.path.join(portable["statistics_uri"], path)) == _stats(os.path.join(direct["statistics_uri"],
                                                                                               path))
    # ItemIndexer: every catalog item embedded and indexed.
    assert portable["item_index"]["count"] == direct["item_index"]["count"] == 1477


def _stats(path):
    """Per feature: rows with it, mean values, and (for numbers) mean and max: order-independent."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    with open(path, "rb") as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    out = {}
    for dataset in stats.datasets:
        for feature in dataset.features:
            common = (feature.num_stats if feature.HasField("num_stats") else feature.string_stats).common_stats
            entry = [common.num_non_missing, round(common.avg_num_values, 6)]
            if feature.HasField("num_stats"):
                entry += [round(feature.num_stats.mean, 6), feature.num_stats.max]
            else:
                entry += [feature.string_stats.unique]
            out[".".join(feature.path.step)] = entry
    return out
