"""Every bench in bench/ runs as docs/benchmarks.md gives it, on the default configuration, at tiny
sizes on the sample: a bench that no longer runs stops measuring what it was written for.

The figures are not checked here (a test must not time anything); what is checked is that each bench
exits 0, prints its table, and reports no wrong answers where it counts them.
"""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, SAMPLE_DIR, holding_the_shared_run

pytestmark = pytest.mark.slow
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "ml-latest-small")


def bench(name, *args, timeout=600):
    proc = subprocess.run([sys.executable, os.path.join("bench", f"{name}.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, \
        f"bench/{name}.py exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return proc.stdout


def rates(out: str, names) -> dict[str, float]:
    """{row name: its first number} of a bench's table rows that start with one of `names`."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in names and len(parts) > 1:
            found.setdefault(parts[0], float(parts[1].replace(",", "")))
    return found


def test_trainer_throughput_builds_the_default_model_and_measures_every_input(runs):
    """It once stopped at 'trainer.uniform_negatives needs the catalog' on the default configuration."""
    out = bench("trainer_throughput", "--workdir", runs[0], "--train", f"{SAMPLE_DIR}/train.tsv", "--batches", "64",
                "--steps", "5", "--rounds", "1")
    assert "default model (mixed loss, 512 uniform negatives)" in out
    found = rates(out, {"in_memory", "memory", "files", "tfxio", "raw_tsv"})
    assert set(found) == {"in_memory", "memory", "files", "tfxio", "raw_tsv"} and min(found.values()) > 0, out
    assert "read + gunzip" in out or "the input alone" in out


def test_trainer_phases(runs):
    out = bench("trainer_phases", "--workdir", runs[0], "train_steps=4")
    assert re.search(r"import [\d.]+ s; run_fn [\d.]+ s: count_records", out), out
    assert re.search(r"\d+ steps, best at \d+; eval loss [\d.]+", out), out


def test_statistics_options(runs):
    out = bench("statistics_options", "--workdir", runs[0], "--variants", "pipeline")
    assert '"variant": "pipeline"' in out


def test_ingest_throughput(tmp_path):
    out = bench("ingest_throughput", "--rows", "3000", "--workdir", tmp_path / "ingest", "--modes", "in_memory")
    assert rates(out, {"plain_python", "in_memory"}).keys() == {"plain_python", "in_memory"}, out


def test_milvus_search():
    out = bench("milvus_search", "--sizes", "2000", "--queries", "10", "--nprobes", "8")
    assert re.search(r"^\s+2000 numpy ", out, re.M) and re.search(r"^\s+2000 FLAT ", out, re.M), out
    assert re.search(r"^\s+2000 IVF_FLAT ", out, re.M), out


def test_serving_latency(runs):
    out = bench("serving_latency", "--serving-dir", os.path.join(runs[0], "serving"), "--requests", "20",
                "--clients", "2", "--hostile-clients", "0")
    assert "errors or wrong answers: 0" in out, out


def test_cli_startup(runs, tmp_path_factory):
    with holding_the_shared_run(tmp_path_factory):  # recall-local opens the run's Lite file
        out = bench("cli_startup", "--workdir", runs[0], "--rounds", "1")
    for tool in ("server", "client", "recall-grpc", "recall-local", "bad-workdir", "pipeline-1st", "server-1st"):
        assert re.search(rf"^\s+{tool}\s+[\d.]+ s", out, re.M), (tool, out)


def test_fresh_items(runs, tmp_path_factory):
    with holding_the_shared_run(tmp_path_factory):  # the bench copies the run's Lite file
        out = bench("fresh_items", "--workdir", runs[0], "--posts", "20", "--batch", "10", "--latency-posts", "3")
    assert re.search(r"[\d,]+ posts/s", out), out


def test_recall_service(runs, tmp_path_factory):
    with holding_the_shared_run(tmp_path_factory):  # the bench copies the run's Lite file
        out = bench("recall_service", "--workdir", runs[0], "--requests", "16", "--clients", "1", "--users", "4",
                    "--big", "0")
    assert "parts, summed" in out and "failed requests" not in out, out
    service = [line.split() for line in out.splitlines() if line.split()[1:2] == ["service"]]
    assert {row[2] for row in service} == {"gRPC", "REST"}, out
    assert all(row[6] == "0" for row in service), out  # no wrong or failed answer


def test_server_limits():
    out = bench("server_limits")
    for part in ("bombs", "churn", "storm", "roots"):
        assert re.search(rf"^this checkout\s+{part} ", out, re.M), (part, out)


def test_pipeline_scaling(tmp_path):
    out = bench("pipeline_scaling", "--sizes", "2000", "--train-steps", "5", "--root", tmp_path / "scaling",
                "--until", "Transform")
    assert "2,000 rows:" in out and "Transform" in out, out


@pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"MovieLens is not at {SHARED}")
def test_movielens_quality_baseline(tmp_path):
    out = bench("movielens_quality", "--workdir", tmp_path / "movielens", "--ease-only")
    assert "EASE" in out, out
