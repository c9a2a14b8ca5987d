import gzip

import pytest
import tensorflow as tf

from schema.logfiles import check_header
from schema.rows import Rejected, RowParser

GOOD = b"1\tu1\tp9\t0\t3,4,3\t5:0.5,6:1.5\t7\tp1,p9,p2\n"


@pytest.fixture(scope="module")
def parser(spec):
    return RowParser(spec)


def test_good_row_with_repairs(parser):
    row = parser.parse(GOOD)
    assert row.ints == {"act": [1], "client_type": [0]}
    assert row.strings["client_id"] == [b"u1"]
    assert row.strings["follow_topic_id"] == [b"3", b"4"]          # duplicate 3 removed
    assert row.strings["all_topic_fav_7"] == [b"5", b"6"]
    assert row.floats["all_topic_fav_7_weight"] == [0.5, 1.5]
    assert row.strings["read_post_id"] == [b"p1", b"p2"]            # own post p9 removed
    assert sorted(row.repairs) == ["duplicates:follow_topic_id", "leakage:read_post_id"]


def test_example_parses_with_the_spec_parse_spec(parser, spec):
    parsed = tf.io.parse_single_example(parser.parse(GOOD).to_example_bytes(), spec.raw_feature_spec())
    assert parsed["act"].numpy() == 1
    assert parsed["topic_id"].numpy() == b"7"
    assert tf.sparse.to_dense(parsed["all_topic_fav_7_weight"]).numpy().tolist() == [0.5, 1.5]


def test_truncation_keeps_the_first_maxlen(parser):
    follow = ",".join(str(i) for i in range(25)).encode()
    row = parser.parse(b"0\tu\tp\t1\t" + follow + b"\t\t7\t\n")
    assert row.strings["follow_topic_id"] == [str(i).encode() for i in range(20)]
    assert row.strings["all_topic_fav_7"] == [] and row.floats["all_topic_fav_7_weight"] == []
    assert row.strings["read_post_id"] == []
    assert row.repairs == ["truncated:follow_topic_id", "empty_list:all_topic_fav_7", "empty_list:read_post_id"]


@pytest.mark.parametrize("line, reason", [
    (b"\xff\xfe\tu\n", "not_utf8"),
    (b"1\tu1\tp9\t0\n", "field_count"),
    (b"\n", "field_count"),
    (b"2\tu1\tp9\t0\t3\t5:0.5\t7\tp1\n", "bad_label"),
    (b"1\tu1\tp9\tx\t3\t5:0.5\t7\tp1\n", "bad_int:client_type"),
    (b"1\tu1\t\t0\t3\t5:0.5\t7\tp1\n", "empty_id:post_id"),
    (b"1\tu1\tp9\t0\t3\t5\t7\tp1\n", "bad_pair:all_topic_fav_7"),
    (b"1\tu1\tp9\t0\t3\t:0.5\t7\tp1\n", "bad_pair:all_topic_fav_7"),
    (b"1\tu1\tp9\t0\t3\t5:-1\t7\tp1\n", "bad_weight:all_topic_fav_7"),
    (b"1\tu1\tp9\t0\t3\t5:nan\t7\tp1\n", "bad_weight:all_topic_fav_7"),
    (b"1\tu1\tp9\t0\t3\t5:abc\t7\tp1\n", "bad_weight:all_topic_fav_7"),
])
def test_bad_rows_are_rejected_with_a_reason(parser, line, reason):
    with pytest.raises(Rejected) as e:
        parser.parse(line)
    assert e.value.reason == reason


def test_unknown_items_are_counted_when_ids_are_known(spec):
    parser = RowParser(spec, known_items=frozenset({"p1", "p9"}))
    row = parser.parse(GOOD)  # post p9 is known, history p1 known and p2 unknown
    assert "unknown_item:read_post_id" in row.repairs and "unknown_item:post_id" not in row.repairs
    row = parser.parse(GOOD.replace(b"\tp9\t", b"\tp5\t"))
    assert "unknown_item:post_id" in row.repairs


def test_header_check_names_missing_and_unexpected(spec):
    header = [c for c in spec.columns if c != "topic_id"] + ["surprise"]
    with pytest.raises(ValueError, match=r"missing columns \['topic_id'\], unexpected columns \['surprise'\]"):
        check_header(header, spec, "f.tsv")
    check_header(list(spec.columns), spec, "f.tsv")


def test_gzip_lines_read_like_plain(tmp_path, spec):
    from schema.logfiles import read_lines

    text = "\t".join(spec.columns).encode() + b"\n" + GOOD + GOOD
    (tmp_path / "a.tsv").write_bytes(text)
    with gzip.open(tmp_path / "a.tsv.gz", "wb") as f:
        f.write(text)
    plain = [(n, line) for _, n, line in read_lines(str(tmp_path / "a.tsv"))]
    gz = [(n, line) for _, n, line in read_lines(str(tmp_path / "a.tsv.gz"))]
    assert plain == gz == [(2, GOOD), (3, GOOD)]
