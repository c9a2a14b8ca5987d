"""Faults, restarts and corrupt input (issue [reliability]): nothing lost, nothing broken pushed.

Each fault injected is recorded in the reliability summary (runs/reliability_summary.json), which
pytest prints at the end of the run. Hostile serving traffic is in test_serving_abuse.py.
"""
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SAMPLE_DIR, executions_by_node, run_local, signature_specs, tree_digest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UPSTREAM_OF_TRANSFORM = {"TsvExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
                         "item_vectors_importer"}


def _states(metadata_path):
    try:
        return executions_by_node(metadata_path)
    except Exception:  # the store does not exist yet, or is being created
        return {}


# The restart chain trains 1,000 steps instead of 3,000 (time: it still lasts well past the kill, and
# the model still beats popularity, so the final run pushes); what is compared with the uninterrupted
# run (vocabularies, splits, signatures, items) does not depend on the steps.
# The new-data run trains on 1,000 fewer rows and is worse than the version it would replace (recall@50
# -0.046, 95% interval [-0.088, -0.003] in CI): the served-model gate refuses it, rightly. These tests
# are about artifacts and versions, not quality, so the gate lets any candidate through here
# (tests/e2e/test_continuous.py checks the refusal).
CHAIN_CONFIG = "trainer: {train_steps: 1000}\ncontinuous: {max_regression: 1.0}\n"


def _chain_args(workdir) -> list[str]:
    path = os.path.join(os.path.dirname(workdir), "chain.yaml")
    with open(path, "w") as f:
        f.write(CHAIN_CONFIG)
    return ["--no-serving-demo", "--config", path]


def _kill_during(workdir, node: str, settle_seconds: float) -> dict:
    """Starts the run, waits until `node` is RUNNING in MLMD, waits `settle_seconds` more, then
    SIGKILLs the whole process group: what a crashed machine or an OOM kill leaves behind."""
    log = open(os.path.join(os.path.dirname(workdir), f"killed-during-{node}.log"), "w")
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "local", "--workdir", workdir, "--sample",
                             *_chain_args(workdir)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    metadata = os.path.join(workdir, "metadata.sqlite")
    deadline = time.monotonic() + 600
    while (_states(metadata).get(node) or [None])[-1] != "RUNNING":  # a context may exist before its execution
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {node} started; see {log.name}"
        assert time.monotonic() < deadline, f"{node} did not start within 600 s"
        time.sleep(0.3)
    time.sleep(settle_seconds)
    assert proc.poll() is None, f"the run ended before the kill; see {log.name}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    return executions_by_node(metadata)




@pytest.fixture(scope="module")
def restarted(tmp_path_factory, reliability):
    """One workdir: killed during Transform, rerun and killed during training, rerun to the end."""
    workdir = str(tmp_path_factory.mktemp("restart") / "run")
    at_transform = _kill_during(workdir, "Transform", settle_seconds=3)
    reliability.record("restart", "SIGKILL during Transform", "Transform left RUNNING, nothing after it ran",
                       f"Transform states {at_transform['Transform']}, Trainer ran: {'Trainer' in at_transform}",
                       at_transform["Transform"] == ["RUNNING"] and not at_transform.get("Trainer"))
    at_trainer = _kill_during(workdir, "Trainer", settle_seconds=12)
    reliability.record("restart", "SIGKILL during training", "Trainer left RUNNING, Transform reused",
                       f"Trainer states {at_trainer['Trainer']}, Transform states {at_trainer['Transform']}",
                       at_trainer["Trainer"] == ["RUNNING"] and at_trainer["Transform"] == ["RUNNING", "COMPLETE"])
    final = run_local(workdir, *_chain_args(workdir))
    return workdir, at_transform, at_trainer, final


def test_killed_runs_resume_from_the_metadata_store(restarted):
    workdir, at_transform, at_trainer, final = restarted
    assert at_transform["Transform"] == ["RUNNING"] and not at_transform.get("Trainer")
    assert all(at_transform[n] == ["COMPLETE"] for n in UPSTREAM_OF_TRANSFORM)
    # The second run reused everything upstream of Transform, ran Transform, and died in training.
    assert at_trainer["Transform"] == ["RUNNING", "COMPLETE"] and at_trainer["Trainer"] == ["RUNNING"]
    assert all(at_trainer[n] == ["COMPLETE", "CACHED"] for n in UPSTREAM_OF_TRANSFORM)
    # The third run reused Transform and trained once, to the end.
    states = {c["component"]: c["state"] for c in final["components"]}
    assert all(states[n] == "CACHED" for n in UPSTREAM_OF_TRANSFORM | {"Transform"})
    assert states["Trainer"] == "COMPLETE" and final["pushed"] is True
    assert executions_by_node(os.path.join(workdir, "metadata.sqlite"))["Trainer"] == ["RUNNING", "COMPLETE"]


def test_restarted_outputs_equal_an_uninterrupted_run(restarted, runs, reliability):
    _, _, _, final = restarted
    _, reference, _ = runs
    vocab = os.path.join("transform_fn", "assets")
    got = tree_digest(os.path.join(final["transform_graph_uri"], vocab))
    want = tree_digest(os.path.join(reference["transform_graph_uri"], vocab))
    same_signatures = all(
        signature_specs(final["pushed_models"][0]["towers"][t] if t else final["pushed_models"][0]["path"])
        == signature_specs(reference["pushed_models"][0]["towers"][t] if t else reference["pushed_models"][0]["path"])
        for t in ("", "user", "item"))
    reliability.record("restart", "outputs after two kills vs an uninterrupted run",
                       "same vocabularies, row counts, signatures, indexed items",
                       f"{len(got)} vocabulary files equal: {got == want}; splits equal: "
                       f"{final['splits'] == reference['splits']}; signatures equal: {same_signatures}",
                       got == want and final["splits"] == reference["splits"] and same_signatures)
    assert len(want) >= 4 and got == want
    assert final["splits"] == reference["splits"]
    assert same_signatures
    assert final["item_index"]["count"] == reference["item_index"]["count"]


@pytest.fixture(scope="module")
def new_data_run(restarted, tmp_path_factory):
    """The restarted workdir again, on new training logs (the sample less its last 1,000 rows)."""
    workdir, _, _, before = restarted
    old_version = before["pushed_models"][0]["path"]
    old_digest = tree_digest(old_version)
    lines = open(os.path.join(SAMPLE_DIR, "train.tsv")).read().splitlines(keepends=True)
    new_logs = tmp_path_factory.mktemp("new-logs") / "train.tsv"
    new_logs.write_text("".join(lines[:-1000]))
    after = run_local(workdir, *_chain_args(workdir), "--train", str(new_logs))
    return workdir, before, after, old_version, old_digest


def test_new_data_makes_new_artifacts_and_a_new_version_beside_the_old(new_data_run, reliability):
    workdir, before, after, old_version, old_digest = new_data_run
    new_version = after["pushed_models"][0]["path"]
    versions = sorted(os.listdir(os.path.join(workdir, "serving", "dssm")))
    ok = (new_version != old_version and tree_digest(old_version) == old_digest
          and versions == sorted([os.path.basename(old_version), os.path.basename(new_version)]))
    reliability.record("new data", "a run on new logs into a workdir that serves a model",
                       "new artifacts and a new version; the served version untouched",
                       f"versions {versions}; old version byte-identical: "
                       f"{tree_digest(old_version) == old_digest}", ok)
    assert after["splits"]["train"]["read"] == before["splits"]["train"]["read"] - 1000
    assert after["examples_uri"] != before["examples_uri"] and after["model_uri"] != before["model_uri"]
    assert ok, versions
    for tower in ("user", "item"):
        assert len(os.listdir(os.path.join(workdir, "serving", f"dssm_{tower}"))) == 2


def _truncated_gz(tmp):
    data = gzip.compress(open(os.path.join(SAMPLE_DIR, "train.tsv"), "rb").read())
    path = tmp / "train.tsv.gz"
    path.write_bytes(data[: len(data) * 6 // 10])
    return ["--train", str(path)], [f"{path}: unreadable after line", "truncated or corrupt"]


def _vectors_with(tmp, edit):
    rows = [json.loads(line) for line in open(os.path.join(SAMPLE_DIR, "item_vectors.jsonl"))]
    rows, expected = edit(rows)
    path = tmp / "vectors.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--item-embeddings", str(path)], [f"{path}:{expected}"]


def _wrong_dimension(tmp):
    def edit(rows):
        rows[41]["values"] = rows[41]["values"][:-1]
        return rows, f"42: post_id '{rows[41]['post_id']}' has {len(rows[41]['values'])} values"
    return _vectors_with(tmp, edit)


def _duplicate_post_id(tmp):
    def edit(rows):
        rows.append({"post_id": rows[7]["post_id"], "values": [0.0] * len(rows[7]["values"])})
        return rows, f"{len(rows)}: duplicate post_id '{rows[7]['post_id']}'"
    return _vectors_with(tmp, edit)


def _empty_training_split(tmp):
    path = tmp / "train.tsv"
    path.write_text(open(os.path.join(SAMPLE_DIR, "train.tsv")).readline())
    return ["--train", str(path)], ["split train is empty: no usable rows (0 data rows read, 0 rejected"]


def _schema_without_a_feature(tmp):
    from google.protobuf import text_format

    from schema.generate import read_schema

    schema = read_schema(os.path.join(REPO, "schema", "schema.pbtxt"))
    (index,) = [i for i, f in enumerate(schema.feature) if f.name == "topic_id"]
    del schema.feature[index]
    (tmp / "schema.pbtxt").write_text(text_format.MessageToString(schema))
    (tmp / "config.yaml").write_text(f"schema: {tmp / 'schema.pbtxt'}\n")
    return ["--config", str(tmp / "config.yaml")], ["does not match the feature spec: missing ['topic_id']"]


def _data_that_breaks_the_schema(tmp):
    lines = open(os.path.join(SAMPLE_DIR, "train.tsv")).read().splitlines()
    column = lines[0].split("\t").index("client_type")
    rows = [line.split("\t") for line in lines[1:]]
    for row in rows[::10]:  # a tenth of the rows: client_type is a word, not the integer the spec says
        row[column] = "android"
    path = tmp / "train.tsv"
    path.write_text("\n".join([lines[0], *("\t".join(r) for r in rows)]) + "\n")
    return ["--train", str(path)], [f"split train: {len(rows[::10])} of {len(rows)} rows rejected", "client_type"]


CORRUPT = {"truncated .gz log": _truncated_gz, "item vector of the wrong dimension": _wrong_dimension,
           "duplicate post id in the item vectors": _duplicate_post_id, "empty training split": _empty_training_split,
           "schema file that does not match the spec": _schema_without_a_feature,
           "log values that do not match the schema": _data_that_breaks_the_schema}


@pytest.mark.parametrize("fault", list(CORRUPT))
def test_corrupt_input_stops_the_run_with_a_clear_message_and_no_push(fault, new_data_run, tmp_path, reliability):
    workdir = new_data_run[0]
    serving_before = tree_digest(os.path.join(workdir, "serving"))
    args, messages = CORRUPT[fault](tmp_path)
    proc = run_local(workdir, "--no-serving-demo", *args, expect_ok=False)
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    untouched = tree_digest(os.path.join(workdir, "serving")) == serving_before
    ok = proc.returncode != 0 and untouched and all(any(m in line for line in error_lines) for m in messages)
    reliability.record("corrupt input", fault, "the run stops naming the problem; serving untouched",
                       f"rc {proc.returncode}; {error_lines[-1][:300] if error_lines else 'no error line'}", ok)
    assert proc.returncode != 0
    assert len(error_lines) == 1, proc.stderr[-3000:]
    for m in messages:
        assert m in error_lines[0], (m, error_lines[0])
    assert untouched
    named = re.search(r"the rows are in (\S+\.jsonl)", error_lines[0])
    if named:  # the evidence survives the failed run, and the summary keeps the counts
        with open(named.group(1)) as f:
            kept = [json.loads(line) for line in f]
        counted = int(re.search(r"(\d+) (?:of \d+ rows )?rejected", error_lines[0]).group(1))
        assert len(kept) == counted
        with open(os.path.join(workdir, "run_summary.json")) as f:
            assert json.load(f)["splits"]["train"]["rejected"] == counted
