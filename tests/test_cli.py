"""Bad input stops the run before any component starts, with a message naming the file."""
import json
import os

import pytest

import run_pipeline
from tests.conftest import SAMPLE_DIR

TRAIN = os.path.join(SAMPLE_DIR, "train.tsv")
EVAL = os.path.join(SAMPLE_DIR, "eval.tsv")
VECTORS = os.path.join(SAMPLE_DIR, "item_vectors.jsonl")


def _run(tmp_path, **overrides):
    args = {"train": TRAIN, "eval": EVAL, "item-embeddings": VECTORS, "workdir": str(tmp_path / "w")}
    args.update(overrides)
    argv = ["local"] + [x for k, v in args.items() for x in (f"--{k}", v)]
    with pytest.raises(SystemExit) as e:
        run_pipeline.main(argv)
    assert not os.path.exists(tmp_path / "w" / "metadata.sqlite"), "a component started"
    return str(e.value)


def test_missing_file(tmp_path):
    msg = _run(tmp_path, train=str(tmp_path / "nope.tsv"))
    assert msg == f"error: training log file not found: {tmp_path / 'nope.tsv'}"


def test_empty_glob(tmp_path):
    msg = _run(tmp_path, eval=str(tmp_path / "*.tsv"))
    assert msg == f"error: eval log pattern matches no file: {tmp_path / '*.tsv'}"


def test_item_vectors_in_the_wrong_format(tmp_path):
    bad = tmp_path / "vectors.jsonl"
    bad.write_text(json.dumps({"post_id": "p1", "values": [0.1, 0.2]}) + "\n" + "p2 0.3 0.4\n")
    msg = _run(tmp_path, **{"item-embeddings": str(bad)})
    assert msg.startswith(f"error: {bad}:2: not a JSON object")


def test_header_that_does_not_match_the_spec(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("act\tclient_id\tpost_id\n1\tu\tp\n")
    msg = _run(tmp_path, train=str(bad))
    assert f"error: {bad}: header does not match the feature spec: missing columns" in msg


def test_until_names_a_component_of_the_pipeline(tmp_path):
    msg = _run(tmp_path, until="Transfrom")
    assert msg.startswith("error: --until Transfrom: no such component; the pipeline has ")
    assert "Transform" in msg and "TsvExampleGen" in msg


def _run_argv(tmp_path, *argv):
    with pytest.raises(SystemExit) as e:
        run_pipeline.main(["local", "--workdir", str(tmp_path / "w"), *argv])
    assert not os.path.exists(tmp_path / "w" / "metadata.sqlite"), "a component started"
    return str(e.value)


@pytest.mark.parametrize("given,missing", [
    (["--train", TRAIN, "--item-embeddings", VECTORS], "--eval"),
    (["--train", TRAIN, "--eval", EVAL], "--item-embeddings"),
    (["--input", TRAIN], "--item-embeddings"),
    ([], "--train, --eval, --item-embeddings"),
])
def test_a_missing_input_is_an_error_not_the_sample(tmp_path, given, missing):
    msg = _run_argv(tmp_path, *given)
    assert msg.startswith(f"error: missing {missing}: give your logs"), msg
    assert "--sample" in msg


def test_sample_fills_only_what_is_not_given_and_says_so(tmp_path, capsys):
    bad = tmp_path / "train.tsv"
    bad.write_text("act\tclient_id\tpost_id\n1\tu\tp\n")
    msg = _run_argv(tmp_path, "--sample", "--train", str(bad))
    assert f"error: {bad}: header does not match" in msg  # the given file is used, not the sample's
    err = capsys.readouterr().err
    assert f"--sample: eval = {EVAL}" in err and f"--sample: item-embeddings = {VECTORS}" in err
    assert "--sample: train" not in err


def test_input_errors_come_before_tensorflow_is_imported(tmp_path):
    """A wrong path or header is reported without loading TensorFlow (seconds, not ~20 s)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    bad = tmp_path / "train.csv"
    bad.write_text("act,client_id\n1,u\n")
    argv = ["local", "--workdir", str(tmp_path / "w"), "--sample", "--train", str(bad)]
    code = ("import sys, run_pipeline\n"
            "try:\n"
            f"    run_pipeline.main({argv!r})\n"
            "except SystemExit as e:\n"
            "    print(e)\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
            "print('tfx imported:', 'tfx' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    assert f"error: {bad}: header does not match the feature spec (the file must be tab-separated)" in out
    assert "tensorflow imported: False" in out and "tfx imported: False" in out


def test_the_cache_key_covers_every_module_a_component_runs(tmp_path, monkeypatch):
    """Every project module a component imports, directly or not (ItemIndexer runs retrieval/milvus.py,
    every component common/): an edit to any of them changes the code fingerprint that every
    component's cache key holds (PipelineInputs.code_fingerprint), so no cached execution outlives it."""
    import shutil

    from common import LAYERS
    from pipeline import inputs
    from tests.conftest import REPO
    from tests.test_layers import import_graph

    for package in LAYERS:
        shutil.copytree(os.path.join(REPO, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(inputs, "REPO", str(tmp_path))
    graph = import_graph()
    run = set()
    todo = [m for m in graph if m.startswith(("components.", "model."))]  # model/: the module files too
    while todo:
        module = todo.pop()
        if module not in run:
            run.add(module)
            todo += graph[module]
    assert {"retrieval.milvus", "model.trainer", "model.preprocessing", "serving.examples", "schema.rows",
            "common.progress"} <= run
    before = inputs.code_fingerprint()
    assert inputs.code_fingerprint() == before  # stable
    for module in sorted(run):
        path = tmp_path / (module.replace(".", os.sep) + ".py")
        if not path.exists():
            path = tmp_path / module.replace(".", os.sep) / "__init__.py"
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        assert inputs.code_fingerprint() != before, module
        path.write_bytes(original)
    assert inputs.code_fingerprint() == before
