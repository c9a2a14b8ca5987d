"""TsvExampleGen's executor on a fixture log with every bad row kind and every soft problem.

The expected counts are worked out by hand from the fixture below, row by row.
"""
import glob
import gzip
import json
import os
import re
import shutil

import pytest
import tensorflow as tf
from tfx.components.example_gen import utils
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.tsv_example_gen import Executor, IngestError

HEADER = "act\tclient_id\tpost_id\tclient_type\tfollow_topic_id\tall_topic_fav_7\ttopic_id\tread_post_id\n"
FOLLOW_25 = ",".join(f"t{i}" for i in range(25))
TRAIN_ROWS = [
    # kept rows (7) and their soft problems
    b"1\tu1\tp1\t0\tt1,t2\tt1:0.5\tt1\tp2,p3\n",                  # clean
    f"0\tu2\tp2\t1\t{FOLLOW_25}\tt1:1\tt2\tp1\n".encode(),         # truncated:follow_topic_id
    b"0\tu3\tp3\t0\tt1,t1\tt2:0.2\tt3\tp1\n",                      # duplicates:follow_topic_id
    b"1\tu4\tp1\t1\t\t\tt1\t\n",                                   # empty_list x3
    b"0\tu5\tp99\t0\tt1\tt1:1\tt1\tp1\n",                          # unknown_item:post_id
    b"1\tu6\tp2\t0\tt1\tt1:1\tt1\tp2,p1\n",                        # leakage:read_post_id
    b"0\tu7\tp1\t0\tt1\tt1:1\tt1\tp77\n",                          # unknown_item:read_post_id
    # rejected rows (10)
    b"1\tu8\tp1\n",                                                # field_count
    b"x\tu9\tp1\t0\tt1\tt1:1\tt1\tp2\n",                           # bad_label
    b"1\tu10\tp1\tmobile\tt1\tt1:1\tt1\tp2\n",                     # bad_int:client_type
    b"1\tu11\tp1\t0\tt1\tt1\tt1\tp2\n",                            # bad_pair (no colon)
    b"1\tu12\tp1\t0\tt1\t:0.3\tt1\tp2\n",                          # bad_pair (empty id)
    b"1\tu13\tp1\t0\tt1\tt1:-0.5\tt1\tp2\n",                       # bad_weight (negative)
    b"1\tu14\tp1\t0\tt1\tt1:inf\tt1\tp2\n",                        # bad_weight (not finite)
    b"1\tu15\tp\xff\t0\tt1\tt1:1\tt1\tp2\n",                       # not_utf8
    b"1\tu16\t\t0\tt1\tt1:1\tt1\tp2\n",                            # empty_id:post_id
    b"\n",                                                         # field_count (blank line)
]
EVAL_ROWS = [b"1\tu1\tp1\t0\tt1\tt1:1\tt1\tp2\n", b"0\tu2\tp2\t1\tt2\tt2:1\tt2\tp1\n"]

EXPECTED_TRAIN = {
    "read": 17, "written": 7, "rejected": 10,
    "rejected_by_reason": {"bad_pair:all_topic_fav_7": 2, "bad_weight:all_topic_fav_7": 2, "field_count": 2,
                           "bad_int:client_type": 1, "bad_label": 1, "empty_id:post_id": 1, "not_utf8": 1},
    "soft_problems": {"duplicates:follow_topic_id": 1, "empty_list:all_topic_fav_7": 1,
                      "empty_list:follow_topic_id": 1, "empty_list:read_post_id": 1, "leakage:read_post_id": 1,
                      "truncated:follow_topic_id": 1, "unknown_item:post_id": 1,
                      "unknown_item:read_post_id": 1},
}


def _write_inputs(root):
    os.makedirs(root / "logs", exist_ok=True)
    (root / "logs" / "train.tsv").write_bytes(HEADER.encode() + b"".join(TRAIN_ROWS))
    with gzip.open(root / "logs" / "eval.tsv.gz", "wb") as f:
        f.write(HEADER.encode() + b"".join(EVAL_ROWS))
    (root / "item_ids.txt").write_text("p1\np2\np3\n")


def _run(root, spec, input_config, output_config=None, max_rejected=1.0):
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "TsvExampleGen" / "examples" / "1")  # TFX's layout: <node>/<output>/<execution>
    output_config = output_config or utils.make_default_output_config(input_config)
    props = {
        "input_base": str(root / "logs"),
        "input_config": proto_utils.proto_to_json(input_config),
        "output_config": proto_utils.proto_to_json(output_config),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        "feature_spec": spec.to_json(),
        "max_rejected_fraction": max_rejected,
        "item_ids_path": str(root / "item_ids.txt"),
    }
    Executor().Do({}, {"examples": [examples]}, props)
    return examples


def _read_examples(examples, split):
    files = glob.glob(os.path.join(examples.uri, f"Split-{split}", "*"))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


EXPLICIT = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="train", pattern="train.tsv"),
                                         example_gen_pb2.Input.Split(name="eval", pattern="eval.tsv.gz")])


def test_fixture_counts_and_quarantine(tmp_path, spec):
    _write_inputs(tmp_path)
    examples = _run(tmp_path, spec, EXPLICIT)
    report = json.loads(json.dumps(examples.get_json_value_custom_property("ingest_report")))
    assert report["train"] == EXPECTED_TRAIN
    assert report["eval"]["read"] == report["eval"]["written"] == 2 and report["eval"]["rejected"] == 0

    kept = _read_examples(examples, "train")
    assert sorted(e.features.feature["client_id"].bytes_list.value[0] for e in kept) == [
        b"u1", b"u2", b"u3", b"u4", b"u5", b"u6", b"u7"]
    u6 = next(e for e in kept if e.features.feature["client_id"].bytes_list.value[0] == b"u6")
    assert list(u6.features.feature["read_post_id"].bytes_list.value) == [b"p1"]  # own post removed
    assert len(_read_examples(examples, "eval")) == 2

    with open(os.path.join(examples.uri, "ingest_report", "train-rejected.jsonl")) as f:
        rejected = [json.loads(line) for line in f]
    assert len(rejected) == 10
    by_line = {r["line"]: r for r in rejected}
    assert by_line[10]["reason"] == "bad_label" and by_line[10]["raw"].startswith("x\tu9")
    assert by_line[16]["reason"] == "not_utf8" and "\\xff" in by_line[16]["raw"]
    assert all(r["file"].endswith("train.tsv") for r in rejected)


def test_too_many_rejected_rows_stop_the_run(tmp_path, spec):
    _write_inputs(tmp_path)
    with pytest.raises(IngestError, match=r"split train: 10 of 17 rows rejected .*bad_pair:all_topic_fav_7=2") as e:
        _run(tmp_path, spec, EXPLICIT, max_rejected=0.01)
    # The file the message names is outside the output folder that TFX deletes after a failure.
    named = re.search(r"the rows are in (\S+\.jsonl)", str(e.value)).group(1)
    output = tmp_path / "TsvExampleGen" / "examples" / "1"
    assert not named.startswith(str(output) + os.sep)
    shutil.rmtree(output)  # what TFX does to a failed execution's outputs
    with open(named) as f:
        assert len(f.readlines()) == 10
    with open(os.path.join(os.path.dirname(named), "report.json")) as f:
        assert json.load(f)["train"]["rejected"] == 10


def test_a_file_where_every_row_is_rejected_gives_the_reasons(tmp_path, spec):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.tsv").write_text(HEADER + "1,u1,p1,0,t1,t1:1,t1,p2\n0,u2,p1,0,t1,t1:1,t1,p2\n")
    (tmp_path / "logs" / "eval.tsv").write_text(HEADER + "1\tu1\tp1\t0\tt1\tt1:1\tt1\tp2\n")
    (tmp_path / "item_ids.txt").write_text("p1\n")
    config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="train", pattern="train.tsv"),
                                           example_gen_pb2.Input.Split(name="eval", pattern="eval.tsv")])
    with pytest.raises(IngestError, match=r"split train is empty: no usable rows \(2 data rows read, 2 rejected; "
                                          r"most frequent reasons: field_count=2 \(the file must be tab-separated"):
        _run(tmp_path, spec, config)


def test_hash_split_keeps_each_user_in_one_split(tmp_path, spec):
    os.makedirs(tmp_path / "logs")
    rows = [f"{i % 2}\tu{i % 40}\tp{i % 7}\t0\tt1\tt1:1\tt{i % 3}\tp1\n" for i in range(400)]
    (tmp_path / "logs" / "all.tsv").write_text(HEADER + "".join(rows))
    (tmp_path / "item_ids.txt").write_text("p1\n")
    output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=3),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=1)],
        partition_feature_name="client_id"))
    single = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="all", pattern="all.tsv")])
    examples = _run(tmp_path, spec, single, output)
    report = examples.get_json_value_custom_property("ingest_report")
    users = {s: {e.features.feature["client_id"].bytes_list.value[0] for e in _read_examples(examples, s)}
             for s in ("train", "eval")}
    assert users["train"] and users["eval"] and not users["train"] & users["eval"]
    assert report["all"]["read"] == 400 and report["all"]["written"] == 400
    assert report["train"]["written"] + report["eval"]["written"] == 400
    assert report["train"]["written"] == len(_read_examples(examples, "train"))
