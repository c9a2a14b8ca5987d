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


def test_a_npy_without_its_ids_file_is_one_line_before_tensorflow(tmp_path):
    """Issue [first-week] 5: an 18-line NotFoundError after 11.6 s before."""
    import numpy as np

    np.save(tmp_path / "vectors.npy", np.ones((3, 32), np.float32))
    msg = _run(tmp_path, **{"item-embeddings": str(tmp_path / "vectors.npy")})
    assert msg == (f"error: {tmp_path / 'vectors.npy'}: a .npy item-vector file needs its ids beside it in "
                   f"{tmp_path / 'vectors.ids.txt'} (one id per line, in row order)")


def test_an_unquoted_glob_the_shell_expanded_is_one_line_that_says_to_quote_it(tmp_path):
    """Issue [first-week] 5: argparse's "unrecognized arguments" with no hint before."""
    with pytest.raises(SystemExit) as e:
        run_pipeline.main(["local", "--train", TRAIN, EVAL, VECTORS, "--workdir", str(tmp_path / "w")])
    assert str(e.value) == (f"error: unrecognized arguments: {EVAL} {VECTORS}: these are files, so an unquoted glob "
                            "was probably expanded by the shell; quote the pattern, e.g. --train 'logs/day*.tsv'")


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
    from tests.pipeline.test_layers import import_graph

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


@pytest.mark.parametrize("module", ["serving.server", "retrieval.service"])
def test_a_port_another_process_listens_on_is_one_line(tmp_path, module):
    """Issue [first-week] 5: the model server answered a port in use with 17 lines after 8.4 s."""
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        flags = (["--model_name", "m", "--model_base_path", str(tmp_path)] if module == "serving.server"
                 else ["--workdir", str(tmp_path), "--model_target", "127.0.0.1:1"])
        r = subprocess.run([sys.executable, "-m", module, "--port", str(port), *flags], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (--port): another process listens there")


def test_a_model_base_path_that_does_not_exist_is_one_line(tmp_path):
    """Issue [first-week] 5: it was accepted, and every request answered 404."""
    import subprocess
    import sys

    from tests.conftest import REPO

    r = subprocess.run([sys.executable, "-m", "serving.server", "--port", "0", "--model_name", "m",
                        "--model_base_path", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr == (f"error: --model_base_path {tmp_path / 'nope'}: no such directory (it "
                                              "holds the model's versions, <base_path>/<version>/saved_model.pb)\n")


@pytest.mark.parametrize("summary, expected", [
    (None, "no pipeline run wrote this work directory: run the pipeline first (make demo), or give --milvus"),
    ({"not_pushed_because": ["recall@50 0.10 does not beat the popularity baseline"]},
     "the last run in {w} pushed no model, so nothing was indexed: recall@50 0.10 does not beat the popularity "
     "baseline"),
    ({"failure": "RuntimeError: Trainer broke"}, "the last run in {w} stopped: RuntimeError: Trainer broke"),
    ({"splits": {}}, "the last run in {w} did not reach the ItemIndexer"),
    ("partial", "only a partial run (--until) ran in {w}: run the whole pipeline"),
])
def test_recall_on_a_run_without_an_index_says_why_from_its_summary(tmp_path, summary, expected):
    """Issue [first-week] 6: recall on a run that pushed nothing said 'run the pipeline first'."""
    import subprocess
    import sys

    from tests.conftest import REPO

    workdir = tmp_path / "w"
    workdir.mkdir()
    if summary == "partial":  # a partial run writes its summary under partial/
        (workdir / "partial").mkdir()
        (workdir / "partial" / "run_summary.json").write_text(json.dumps({"partial_run": {"until": "Transform"}}))
    elif summary is not None:
        (workdir / "run_summary.json").write_text(json.dumps(summary))
    r = subprocess.run([sys.executable, "-m", "retrieval.recall", "--workdir", str(workdir), "--log-line", "x"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {workdir / 'milvus.db'} does not exist: {expected.format(w=workdir)}")


def test_recall_and_the_client_read_users_from_the_same_flags():
    """Issue [one-place]: the two tools declared --features/--log-line/--log-file/--limit each, with
    --limit 3 in one and 5 in the other."""
    import subprocess
    import sys

    from tests.conftest import REPO

    helps = {m: subprocess.run([sys.executable, "-m", m, *(["user"] if m == "serving.client" else []), "--help"],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
             for m in ("retrieval.recall", "serving.client")}
    for module, proc in helps.items():
        assert proc.returncode == 0, proc.stderr
        text = " ".join(proc.stdout.split())
        for flag in ("--features FEATURES", "--log-line LOG_LINE", "--log-file LOG_FILE",
                     "--limit LIMIT with --log-file (default 3)"):
            assert flag in text, (module, flag, text)
    for module in helps:
        r = subprocess.run([sys.executable, "-m", module, *(["user"] if module == "serving.client" else []),
                            "--log-line", "x", "--limit", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr == "error: --limit must be at least 1, got 0\n", (module, r.stderr)
