"""Issue [first-week] 1: every tool that reads a few users of a log reads its header (one reader,
schema/logfiles.read_log): a file with its columns in another order gives the same answers as the
original, a headerless one is one error line, a .gz log reads as the plain one. The CLIs run in
subprocesses against the shared run (a copy of its Lite file) and the project's model server."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, copy_pushed_run, free_port

EVAL = os.path.join(REPO, "data", "sample", "eval.tsv")


def _swapped(lines: list[str], a: int, b: int) -> list[str]:
    out = []
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        fields[a], fields[b] = fields[b], fields[a]
        out.append("\t".join(fields) + "\n")
    return out


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """{"original", "reordered" (client_id and post_id swapped), "gz" (reordered, gzipped), "headerless"}."""
    tmp = tmp_path_factory.mktemp("logs")
    with open(EVAL) as f:
        lines = [next(f) for _ in range(6)]
    header = lines[0].rstrip("\n").split("\t")
    a, b = header.index("client_id"), header.index("post_id")
    paths = {name: str(tmp / f"{name}.tsv") for name in ("original", "reordered", "headerless")}
    with open(paths["original"], "w") as f:
        f.writelines(lines)
    with open(paths["reordered"], "w") as f:
        f.writelines(_swapped(lines, a, b))
    with open(paths["headerless"], "w") as f:
        f.writelines(lines[1:])
    paths["gz"] = str(tmp / "reordered.tsv.gz")
    with gzip.open(paths["gz"], "wt") as f:
        f.writelines(_swapped(lines, a, b))
    return paths


def test_read_log_puts_columns_in_the_spec_order_and_refuses_a_headerless_file(logs):
    from schema.logfiles import LogFileError, read_log
    from schema.spec import load_spec

    spec = load_spec()
    with open(EVAL) as f:
        by_hand = [next(f).rstrip("\n") for _ in range(6)][1:]  # the bundled file is in the spec's order
    assert [line for _, line in read_log(logs["original"], spec)] == by_hand
    assert [line for _, line in read_log(logs["reordered"], spec)] == by_hand
    assert [line for _, line in read_log(logs["gz"], spec, 3)] == by_hand[:3]
    assert [n for n, _ in read_log(logs["original"], spec)] == [2, 3, 4, 5, 6]
    with pytest.raises(LogFileError, match="header does not match the feature spec: missing columns"):
        list(read_log(logs["headerless"], spec))


def test_the_reports_example_users_come_from_a_gz_log_as_from_the_plain_one(logs):
    from pipeline.report import example_log_lines
    from schema.spec import load_spec

    spec = load_spec()
    plain = example_log_lines(EVAL, spec, users=2)
    gz = os.path.join(os.path.dirname(logs["gz"]), "eval.tsv.gz")
    with open(EVAL, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert len(plain) == 2 and example_log_lines(gz, spec, users=2) == plain


@pytest.fixture(scope="module")
def recall_run(runs, tmp_path_factory):
    """(a workdir with a copy of the shared run's Lite file, the model server's target)."""
    from serving.server import spawn

    workdir, _, _ = runs
    tmp = tmp_path_factory.mktemp("recall-logs")
    copy_pushed_run(runs, tmp, tmp_path_factory)
    port = free_port()
    model, _ = spawn(["--port", str(port), "--model_name", "dssm", "--model_base_path", str(tmp / "serving" / "dssm")],
                     str(tmp / "model.log"), timeout=120)
    yield str(tmp), f"127.0.0.1:{port}", workdir
    model.kill()
    model.wait()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_recall_and_the_client_answer_a_reordered_log_as_the_original(recall_run, logs):
    workdir, target, shared = recall_run

    def recall(path):
        r = _cli("retrieval.recall", "--workdir", workdir, "--target", target, "--log-file", path, "--limit", "3",
                 "--k", "5")
        return r.returncode, r.stdout, r.stderr

    rc, original, err = recall(logs["original"])
    assert rc == 0, err
    records = [json.loads(x) for x in original.splitlines()]
    assert len(records) == 3 and all(r["user"]["client_id"].startswith("u") for r in records)  # not a post id
    for name in ("reordered", "gz"):
        rc, out, err = recall(logs[name])
        assert rc == 0, err
        assert [(r["user"]["client_id"], r["user"]["line"], r["hits"]) for r in map(json.loads, out.splitlines())] \
            == [(r["user"]["client_id"], r["user"]["line"], r["hits"]) for r in records]
    rc, out, err = recall(logs["headerless"])
    assert rc == 1 and out == "" and err.count("\n") == 1 and "header does not match the feature spec" in err

    def client(path):
        return _cli("serving.client", "--target", target, "--workdir", shared, "user", "--log-file", path,
                    "--limit", "2")

    original_vectors = client(logs["original"])
    assert original_vectors.returncode == 0, original_vectors.stderr
    vectors = [json.loads(x) for x in original_vectors.stdout.splitlines()]
    with open(logs["original"]) as f:
        header, *rows = f.read().splitlines()
    users = [dict(zip(header.split("\t"), row.split("\t"), strict=True))["client_id"] for row in rows[:2]]
    assert [v["user"] for v in vectors] == [{"source": logs["original"], "line": n, "client_id": u}
                                            for n, u in zip((2, 3), users, strict=True)]  # whose vector each is
    assert all(len(v["embedding"]) == len(vectors[0]["embedding"]) > 0 for v in vectors)
    reordered = [json.loads(x) for x in client(logs["reordered"]).stdout.splitlines()]
    assert [({**r["user"], "source": None}, r["embedding"]) for r in reordered] == \
        [({**v["user"], "source": None}, v["embedding"]) for v in vectors]
    headerless = client(logs["headerless"])
    assert headerless.returncode == 1 and "header does not match the feature spec" in headerless.stderr
    assert headerless.stderr.count("\n") == 1
