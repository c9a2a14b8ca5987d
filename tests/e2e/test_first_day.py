"""What a new user meets on the first day: exit codes and one-line errors before anything heavy loads,
tools that never import TensorFlow's runtime, recall output that says what happened, a report that
shows why training stopped."""
import collections
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SAMPLE_DIR, holding_the_shared_run


def _python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


# ---- the hash split's eval users, counted before the run ----

def test_the_eval_bucket_is_tfxs_own_partition():
    """pipeline/preflight.py's bucket against TFX's _PartitionFn on the same tf.Examples: ids of one
    to 300 bytes (varint lengths of one and two bytes), non-ASCII, and 3:2 buckets."""
    import tensorflow as tf
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2

    from pipeline.preflight import hash_split_is_eval

    for buckets in ({"train": 9, "eval": 1}, {"train": 3, "eval": 2}):
        config = example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b) for n, b in buckets.items()],
            partition_feature_name="client_id")
        edges = [buckets["train"], buckets["train"] + buckets["eval"]]
        in_eval = 0
        for i in range(1500):
            user = f"u{i}".encode() if i % 2 else ("x" * (i % 300)).encode() + "é".encode()
            example = tf.train.Example()
            example.features.feature["client_id"].bytes_list.value.append(user)
            expected = _PartitionFn(example, 2, edges, config) == 1
            assert hash_split_is_eval(user, buckets) == expected, user
            in_eval += expected
        assert 0 < in_eval < 1500


def test_eval_users_are_counted_by_hand_and_the_warning_names_the_fix(tmp_path, spec):
    from pipeline.preflight import clicking_eval_users, hash_split_is_eval, too_few_eval_users_warning

    header = "\t".join(spec.columns)
    rows = [  # act, client_id: u1 clicks twice, u2 never clicks, u3 once, u4 once
        ("1", "u1"), ("1", "u1"), ("0", "u2"), ("0", "u2"), ("1", "u3"), ("0", "u3"), ("1", "u4")]

    def line(act, user):
        values = {c: "" for c in spec.columns}
        values.update({spec.label: act, spec.user_id: user, spec.item_id: "p1"})
        return "\t".join(values[c] for c in spec.columns)

    path = tmp_path / "eval.tsv"
    path.write_text("\n".join([header, *(line(a, u) for a, u in rows)]) + "\n")
    assert clicking_eval_users([str(path)], spec, None, enough=100) == 3  # u1, u3, u4
    assert clicking_eval_users([str(path)], spec, None, enough=2) == 2  # stops once enough are found
    assert clicking_eval_users([str(path)], spec, None, enough=100, max_lines=4) is None  # a guess: none
    split = {"train": 1, "eval": 1}
    expected = sum(hash_split_is_eval(u.encode(), split) for u in ("u1", "u3", "u4"))
    assert clicking_eval_users([str(path)], spec, split, enough=100) == expected
    warning = too_few_eval_users_warning([str(path)], spec, None, 200)
    assert warning.startswith("the eval logs hold 3 users with a click, fewer than evaluation.min_eval_users 200")
    assert "exit code 3" in warning and "--allow-not-blessed" in warning
    warning = too_few_eval_users_warning([str(path)], spec, {"train": 9, "eval": 1}, 200)
    assert "sends 10% of the users to eval" in warning and "about 2,000 clicking users" in warning
    assert too_few_eval_users_warning([str(path)], spec, None, 3) is None


def test_a_run_on_too_few_users_warns_at_once_and_a_bad_workdir_is_one_line_before_tensorflow(tmp_path):
    """The sample's train.tsv as --input holds too few users for the hash split's eval share: the
    warning comes before the run; an unwritable work directory then stops it with one error line,
    and neither needed TensorFlow's runtime."""
    code = ("import sys, run_pipeline\n"
            "try:\n"
            f"    run_pipeline.main(['local', '--input', '{SAMPLE_DIR}/train.tsv', '--item-embeddings',\n"
            f"                       '{SAMPLE_DIR}/item_vectors.jsonl', '--workdir', sys.argv[1]])\n"
            "except SystemExit as e:\n"
            "    print('exit:', e.code)\n"
            "print('tensorflow runtime loaded:', 'tensorflow.python' in sys.modules)\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for workdir, message in [("/proc/dssm-run", "error: cannot write the work directory /proc/dssm-run: /proc: "
                                                "not writable"),
                             (str(blocker / "run"), f"error: cannot create the work directory {blocker}/run: "
                                                    f"{blocker} is a file, not a directory")]:
        proc = subprocess.run([sys.executable, "-c", code, workdir], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert f"exit: {message}" in proc.stdout, proc.stdout + proc.stderr[-2000:]
        assert "tensorflow runtime loaded: False" in proc.stdout
        assert "Traceback" not in proc.stderr
    # With a writable workdir the checks pass and warn (the run itself is not started here).
    checks = ("import sys, run_pipeline\n"
              f"args = run_pipeline.build_parser().parse_args(['local', '--input', '{SAMPLE_DIR}/train.tsv',\n"
              f"    '--item-embeddings', '{SAMPLE_DIR}/item_vectors.jsonl', '--workdir', sys.argv[1]])\n"
              "from pipeline.inputs import load\nfrom pipeline.local_runner import preflight\n"
              "preflight(args, *load(args))\n"
              "print('tensorflow runtime loaded:', 'tensorflow.python' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", checks, str(tmp_path / "run")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "tensorflow runtime loaded: False" in proc.stdout, proc.stderr[-2000:]
    assert proc.stderr.startswith("warning: the hash split (split_buckets {'train': 9, 'eval': 1}) sends 10% of the "
                                  "users to eval: it will hold 38 users with a click"), proc.stderr[-2000:]


def test_the_kubeflow_output_path_is_checked_before_anything_compiles(tmp_path):
    proc = subprocess.run([sys.executable, "run_pipeline.py", "kubeflow", "--sample", "--pipeline-root",
                           str(tmp_path / "root"), "--output", "/proc/dssm/pipeline.json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("error: cannot write the compiled pipeline "
                                                    "/proc/dssm/pipeline.json: /proc: not writable "
                                                    "(No such file or directory)")


# ---- tools without TensorFlow's runtime ----

@pytest.mark.parametrize("module", ["serving.client", "retrieval.recall"])
def test_the_client_and_recall_import_no_tensorflow_runtime(module):
    proc = _python(f"import sys, {module}\n"
                   "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.python')))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_protos_loaded_first_are_tensorflows_own_once_it_loads():
    """common/tf_protos.py, then a real `import tensorflow`: TensorFlow works and its message
    classes are the ones the client built its requests with."""
    proc = _python("from common import tf_protos\n"
                   "tf_protos.load()\n"
                   "from tensorflow.core.framework import tensor_pb2\n"
                   "from tensorflow.core.example import example_pb2\n"
                   "import tensorflow as tf\n"
                   "proto = tf.make_tensor_proto([1.5, 2.5])\n"
                   "print(type(proto) is tensor_pb2.TensorProto, tf.train.Example is example_pb2.Example,\n"
                   "      tf.make_ndarray(proto).tolist(), float(tf.reduce_sum(tf.constant([1.0, 2.0]))))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True", "[1.5,", "2.5]", "3.0"]


def test_tools_are_quiet_unless_verbose():
    """No TensorFlow C++ log lines (cuDNN/cuBLAS registration) or third-party FutureWarnings from a
    tool's start-up; --verbose brings them back."""
    code = ("import sys\n"
            "from common.quiet import quiet, verbose_requested\n"
            "quiet(verbose_requested(sys.argv[1:]))\n"
            "import warnings\n"
            "warnings.warn('a third-party notice', FutureWarning)\n"
            "import tensorflow as tf\n"
            "tf.constant(1.0)\n")
    quiet = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                                                  "PYTHONWARNINGS")})
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-c", code, "--verbose"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items()
                                            if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")})
    assert "a third-party notice" in loud.stderr


# ---- recall output ----

def _topics_in_logs(spec) -> dict[str, str]:
    topics = {}
    for name in ("train.tsv", "eval.tsv"):
        with open(os.path.join(SAMPLE_DIR, name)) as f:
            columns = f.readline().rstrip("\n").split("\t")
            for line in f:
                row = dict(zip(columns, line.rstrip("\n").split("\t"), strict=True))
                topics[row[spec.item_id]] = row["topic_id"]
    return topics


def test_recall_over_a_served_model_says_who_which_version_and_generation_without_tensorflow(
        runs, spec, tmp_path_factory):
    """retrieval.recall --target against this project's server over the run's pushed model: one JSON
    object per query (the log line and user, the pushed version, the generation the index holds,
    the history length, every hit's stored topic_id equal to the topic the logs give that post), a
    note for a user without history, a table for reading; the CLI process never loads TensorFlow's
    runtime."""
    from serving.model_config import read_config_file
    from serving.server import ModelServer

    workdir, first, _ = runs
    pushed_version = int(first["pushed_models"][0]["version"])  # the summary keeps it as text
    code = ("import runpy, sys, atexit\n"
            "atexit.register(lambda: print('tensorflow runtime loaded:', 'tensorflow.python' in sys.modules))\n"
            "sys.argv = ['retrieval.recall', *sys.argv[1:]]\n"
            "runpy.run_module('retrieval.recall', run_name='__main__')\n")
    with holding_the_shared_run(tmp_path_factory), \
            ModelServer(read_config_file(os.path.join(workdir, "serving", "models.config")), port=0,
                        poll_seconds=0) as server:
        base = [sys.executable, "-c", code, "--workdir", workdir, "--target", server.target, "--k", "5"]
        lines = subprocess.run(base + ["--log-file", f"{SAMPLE_DIR}/eval.tsv", "--limit", "2"], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
        empty = subprocess.run(base + ["--features", json.dumps({"client_id": "new", "client_type": 1})],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
        table = subprocess.run(base + ["--log-file", f"{SAMPLE_DIR}/eval.tsv", "--limit", "1", "--format", "table"],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    for proc in (lines, empty, table):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == "tensorflow runtime loaded: False"
    records = [json.loads(x) for x in lines.stdout.strip().splitlines()[:-1]]
    eval_lines = open(f"{SAMPLE_DIR}/eval.tsv").read().splitlines()
    topics = _topics_in_logs(spec)
    trained = set()  # every post id of the training log: the run's item-id vocabulary
    with open(f"{SAMPLE_DIR}/train.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            trained |= {row["post_id"], *(p for p in row["read_post_id"].split(",") if p)}
    with open(f"{SAMPLE_DIR}/item_vectors.jsonl") as f:
        stored = {json.loads(line)["post_id"] for line in f}
    assert len(records) == 2
    for n, record in enumerate(records, start=2):  # line 1 is the header
        row = dict(zip(spec.columns, eval_lines[n - 1].split("\t"), strict=True))
        read = {p for p in row["read_post_id"].split(",") if p}
        assert record["user"] == {"source": f"{SAMPLE_DIR}/eval.tsv", "line": n, spec.user_id: row[spec.user_id]}
        assert record["model_version"] == pushed_version
        assert record["generation"] == first["item_index"]["collection"]
        assert record["history_length"] == len(read) and "note" not in record
        assert len(record["hits"]) == 5 and not read & {h["id"] for h in record["hits"]}
        for hit in record["hits"]:
            assert set(hit) == {"id", "score", "topic_id", "model_knows"}
            assert hit["topic_id"] == topics.get(hit["id"], hit["topic_id"])
            assert hit["model_knows"] == ("1" if hit["id"] in trained else "0")  # in the training log or not
        assert [h["score"] for h in record["hits"]] == sorted((h["score"] for h in record["hits"]), reverse=True)
        assert record["score"].startswith("cosine of the user and item vectors") and "-1 to 1" in record["score"]
        assert all(-1.0 <= h["score"] <= 1.0 for h in record["hits"])
        assert record["user_topics"] == {c: [v for v in row[c].split(",") if v]
                                         for c in ("follow_topic_id", "all_topic_fav_7")}
        # The read posts' topics, of those the item store holds (the posts of the run's vector file).
        assert all(p in topics for p in read), "every read post of these lines has a topic in the logs"
        read_topics = collections.Counter(topics[p] for p in read if p in stored)
        assert record["history_topics"] == {"topic_id": dict(sorted(read_topics.items(),
                                                                    key=lambda kv: (-kv[1], kv[0]))[:10])}
        assert record["history_posts_not_stored"] == len(read - stored)
    (lonely,) = [json.loads(x) for x in empty.stdout.strip().splitlines()[:-1]]
    assert lonely["user"] == {"source": "--features", "index": 1, spec.user_id: "new"}
    assert lonely["history_length"] == 0 and lonely["history_topics"] == {"topic_id": {}}
    assert lonely["note"].startswith("empty history (read_post_id)")
    text = table.stdout
    first_row = dict(zip(spec.columns, eval_lines[1].split("\t"), strict=True))
    assert text.startswith(f"user {first_row[spec.user_id]} ({SAMPLE_DIR}/eval.tsv line 2) · model version "
                           f"{pushed_version} · generation {first['item_index']['collection']}")
    table_lines = text.splitlines()
    assert table_lines[1].startswith(f"  follow_topic_id {first_row['follow_topic_id'] or '-'} · all_topic_fav_7 ")
    assert "read posts' topic_id " in table_lines[1]
    assert table_lines[2].startswith("  score: cosine of the user and item vectors")
    assert table_lines[3].split() == ["rank", "id", "score", "model_knows", "topic_id"]
    assert [r.split()[0] for r in table_lines[4:9]] == ["1", "2", "3", "4", "5"]
    assert [r.split()[1] for r in table_lines[4:9]] == [h["id"] for h in records[0]["hits"]]


# ---- the trainer's first evaluation ----

@pytest.mark.parametrize("rows, batch, per_call, every, expected", [
    (8000, 128, 10, 0, 30),        # half a pass: ceil(4000 / 128) = 32 steps, down to a multiple of 10
    (1_000_000, 128, 10, 0, 250),  # larger data: every 250 steps
    (100, 128, 10, 0, 10),         # tiny data: one call of the compiled step
    (8000, 128, 7, 0, 28),         # 32 down to a multiple of 7
    (8000, 128, 10, 77, 77),       # an explicit interval is kept
])
def test_the_eval_interval_is_half_a_pass(rows, batch, per_call, every, expected):
    from model.config import TrainerConfig
    from model.trainer import eval_interval

    cfg = TrainerConfig(batch_size=batch, steps_per_execution=per_call, eval_every_steps=every)
    assert eval_interval(cfg, rows) == expected


# ---- item vectors ----

def test_a_rejected_vector_file_leaves_no_half_written_folder(tmp_path):
    from schema.item_vectors import ItemVectorError, prepare_item_vectors

    source = tmp_path / "vectors.jsonl"
    source.write_text("\n".join(json.dumps({"post_id": f"p{i}", "values": [0.5] * (3 if i != 2 else 2)})
                                for i in range(5)) + "\n")
    out = tmp_path / "prepared"
    with pytest.raises(ItemVectorError, match=r"vectors.jsonl:3: post_id 'p2' has 2 values"):
        prepare_item_vectors(str(source), str(out))
    assert os.listdir(out) == []
    with pytest.raises(ItemVectorError, match=r"vectors.jsonl:1: the feature spec says pretrained_dim 4, the "
                                              r"file's vectors have 3"):
        prepare_item_vectors(str(source), str(out), expected_dim=4)  # at the first line, not after the file
    assert os.listdir(out) == []
