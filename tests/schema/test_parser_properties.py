"""Property-based tests: the row parser never raises anything but Rejected and never loses a row."""
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from schema.rows import Rejected, RowParser
from schema.spec import load_spec

SPEC = load_spec()
PARSER = RowParser(SPEC, known_items=frozenset({"p1", "p2"}))
PARSE_SPEC = SPEC.raw_feature_spec()

_piece = st.sampled_from(list("0123456789abp:,.-e x\\é") + ["inf", "nan", "p1", "p2", "1:0.5", ","])
field_text = st.lists(_piece, max_size=8).map("".join)


def _outcome(line: bytes):
    """'ok' with a parseable example, or 'rejected' with a reason; anything else fails the test."""
    try:
        row = PARSER.parse(line)
    except Rejected as r:
        assert r.reason
        return "rejected"
    parsed = tf.io.parse_single_example(row.to_example_bytes(), PARSE_SPEC)
    assert parsed["act"].numpy() in (0, 1)
    ids = tf.sparse.to_dense(parsed["all_topic_fav_7"]).numpy()
    weights = tf.sparse.to_dense(parsed["all_topic_fav_7_weight"]).numpy()
    assert len(ids) == len(weights) <= 5 and all(w >= 0 for w in weights)
    assert len(tf.sparse.to_dense(parsed["follow_topic_id"]).numpy()) <= 20
    assert parsed["post_id"].numpy() not in tf.sparse.to_dense(parsed["read_post_id"]).numpy().tolist()
    return "ok"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data):
    assert _outcome(data) in ("ok", "rejected")


@settings(max_examples=300, deadline=None)
@given(st.lists(field_text, min_size=6, max_size=10))
def test_random_fields_never_crash(fields):
    assert _outcome("\t".join(fields).encode()) in ("ok", "rejected")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(field_text, min_size=8, max_size=8), min_size=1, max_size=20))
def test_every_line_is_kept_or_rejected(rows):
    lines = ["\t".join(r).encode() for r in rows]
    outcomes = [_outcome(line) for line in lines]
    assert outcomes.count("ok") + outcomes.count("rejected") == len(lines)


_ids = st.lists(st.sampled_from(["p1", "p2", "p3", "t1", "t2", "", " "]), max_size=30).map(",".join)
_pairs = st.lists(st.tuples(st.sampled_from(["t1", "t2", "", "t3"]),
                            st.sampled_from(["0.5", "1", "-1", "nan", "x", "1e3", ""])),
                  max_size=8).map(lambda ps: ",".join(f"{k}:{w}" for k, w in ps))
near_valid_row = st.tuples(st.sampled_from(["0", "1", "2"]), st.sampled_from(["u1", ""]),
                           st.sampled_from(["p1", "p2", "p9", ""]), st.sampled_from(["0", "1", "x"]),
                           _ids, _pairs, st.sampled_from(["t1", ""]), _ids)


@settings(max_examples=400, deadline=None)
@given(st.lists(near_valid_row, min_size=1, max_size=10))
def test_near_valid_rows_are_kept_or_rejected_never_lost(rows):
    outcomes = [_outcome("\t".join(r).encode()) for r in rows]
    assert outcomes.count("ok") + outcomes.count("rejected") == len(rows)


def test_the_near_valid_strategy_reaches_both_outcomes():
    # Guards the property tests above against a strategy that only ever produces rejections.
    seen = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(near_valid_row)
    def collect(row):
        seen.add(_outcome("\t".join(row).encode()))

    collect()
    assert seen == {"ok", "rejected"}
