"""Hostile numbers and files: every value is checked in the type it is stored in, every malformed
item-vector file gives one ItemVectorError with bounded memory, and recall excludes every read post.

Expected outcomes come from numpy (float32 / int64 conversions) and hand-made cases, not from the
code under test."""
import gzip
import json
import tracemalloc
import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from components.tsv_example_gen import IngestError, check_headers, expand_pattern
from schema.item_vectors import ItemVectorError, read_item_vectors
from schema.numbers import NumberError, parse_float32, parse_int64
from schema.rows import Rejected, RowParser
from schema.spec import load_spec

SPEC = load_spec()
PARSER = RowParser(SPEC)
HEADER = "\t".join(SPEC.columns)


def _numpy_float32_finite(text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflow we are asking about
        return bool(np.isfinite(np.float32(float(text))))


# ---- the number grammar ----

@pytest.mark.parametrize("text", ["3.4028234e38", "3.4028235e38", "-3.4028235e38", "1e-50", "0", "1e38", ".5", "2."])
def test_floats_that_float32_holds_are_accepted(text):
    assert _numpy_float32_finite(text)
    assert parse_float32(text) == float(text)


@pytest.mark.parametrize("text", ["1e39", "3.4028236e38", "-1e39", "1e400", "inf", "nan", "-Infinity", "٣", "1_0",
                                  "0x10", "1 0", "", "+", "1e", "9" * 400])
def test_floats_outside_float32_or_the_grammar_are_refused(text):
    with pytest.raises(NumberError):
        parse_float32(text)


@pytest.mark.parametrize("text,value", [("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -(2**63)),
                                        ("+7", 7), ("007", 7)])
def test_int64_edges_are_accepted(text, value):
    assert parse_int64(text) == value == int(np.int64(value))


@pytest.mark.parametrize("text", ["9223372036854775808", "-9223372036854775809", "٣", "1_0", "1.0", " 1", "9" * 5000])
def test_ints_outside_int64_or_the_grammar_are_refused(text):
    with pytest.raises(NumberError):
        parse_int64(text)


# ---- rows at the edges of float32 and int64 ----

def _row(client_type="1", fav="3:0.5", read="p1,p2"):
    return "\t".join(["1", "u1", "p9", client_type, "t1", fav, "t1", read]).encode()


_float_edge = st.one_of(
    st.sampled_from(["3.4028234e38", "3.4028235e38", "3.4028236e38", "1e39", "1e38", "1e-46", "٣", "1_0", "inf"]),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False, width=32).map(repr))
_int_edge = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.sampled_from([str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), "١", "1_000", "+1", "-0"]))


@settings(max_examples=300, deadline=None)
@given(weight=_float_edge, client_type=_int_edge)
def test_a_row_is_written_with_storable_numbers_or_rejected_with_the_reason(weight, client_type):
    ascii_float = weight.isascii() and weight.translate(str.maketrans("", "", ".e-+")).isdigit()
    weight_ok = ascii_float and _numpy_float32_finite(weight)
    int_ok = client_type.isascii() and client_type.lstrip("+-").isdigit() and -(2**63) <= int(client_type) < 2**63
    try:
        row = PARSER.parse(_row(client_type=client_type, fav=f"3:{weight}"))
    except Rejected as r:
        expected = "bad_int:client_type" if not int_ok else "bad_weight:all_topic_fav_7"
        assert r.reason == expected, (weight, client_type, r)
        assert not (weight_ok and int_ok)
        return
    assert weight_ok and int_ok, (weight, client_type)
    parsed = tf.io.parse_single_example(row.to_example_bytes(), SPEC.raw_feature_spec())
    weights = tf.sparse.to_dense(parsed["all_topic_fav_7_weight"]).numpy()
    assert weights.dtype == np.float32 and np.isfinite(weights).all()
    assert int(parsed["client_type"].numpy()) == int(client_type)


def test_the_issue_rows_are_rejected_with_their_reason():
    for line, reason in [(_row(fav="3:1e39"), "bad_weight:all_topic_fav_7"),
                         (_row(client_type="9223372036854775808"), "bad_int:client_type"),
                         (_row(client_type="٣"), "bad_int:client_type"),
                         (_row(client_type="1_0"), "bad_int:client_type")]:
        with pytest.raises(Rejected) as e:
            PARSER.parse(line)
        assert e.value.reason == reason


# ---- the item-vector reader ----

def _read(path, tmp_path):
    """(result or the error, peak bytes allocated by Python and numpy while reading)."""
    tracemalloc.start()
    try:
        return read_item_vectors(str(path), str(tmp_path / "ids.txt")), tracemalloc.get_traced_memory()[1]
    except ItemVectorError as e:
        return e, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _npy_with_header(path, shape, dtype="<f4", data=b""):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data)
    (path.parent / (path.name[:-4] + ".ids.txt")).write_text("a\nb\n")
    return path


HOSTILE_JSONL = {
    "float32_overflow": '{"post_id": "a", "values": [1e39, 0.5]}\n',
    "int_400_digits": '{"post_id": "a", "values": [' + "9" * 400 + "]}\n",
    "int_4400_digits": '{"post_id": "a", "values": [' + "9" * 4400 + "]}\n",
    "nested_100k": '{"post_id": "a", "values": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
    "nan_constant": '{"post_id": "a", "values": [NaN]}\n',
    "one_150k_dim_vector": '{"post_id": "a", "values": [' + ",".join(["0"] * 150_000) + "]}\n"
                           '{"post_id": "b", "values": [1]}\n',
    "line_over_16_MiB": '{"post_id": "a", "values": [' + "0," * (9 << 20) + "0]}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSONL))
def test_hostile_jsonl_gives_one_error_with_bounded_memory(tmp_path, name):
    path = tmp_path / "v.jsonl"
    path.write_text(HOSTILE_JSONL[name])
    result, peak = _read(path, tmp_path)
    assert isinstance(result, ItemVectorError), result
    assert str(result).startswith(f"{path}:1: ") or str(result).startswith(f"{path}:2: "), result
    assert "\n" not in str(result)
    assert peak < 64 * path.stat().st_size + (64 << 20), f"{peak:,} bytes for a {path.stat().st_size:,}-byte file"


@pytest.mark.parametrize("shape,dtype,data", [
    ((10**6, 10**5), "<f4", b""),              # 192 bytes claiming 373 GiB
    ((2, 3), "<f4", b"\0" * 4 * 5),            # one value short
    ((2, 3), "<c8", b"\0" * 8 * 6),            # complex: the imaginary part would be lost
    ((2, 3), "<f8", np.array([[1e39, 0, 0], [0, 0, 0]], "<f8").tobytes()),
    ((6,), "<f4", b"\0" * 24),                 # not a matrix
    ((2, 3), "|O", b"\0" * 48),                # objects
])
def test_hostile_npy_gives_one_error_with_bounded_memory(tmp_path, shape, dtype, data):
    path = _npy_with_header(tmp_path / "v.npy", shape, dtype, data)
    result, peak = _read(path, tmp_path)
    assert isinstance(result, ItemVectorError), result
    assert str(result).startswith(str(path)) and "\n" not in str(result)
    assert peak < (16 << 20)


def test_vector_ids_are_stripped_like_log_ids(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"post_id": "p1 ", "values": [1, 2]}\n{"post_id": " p2", "values": [3, 4]}\n')
    matrix = read_item_vectors(str(path), str(tmp_path / "ids.txt"))
    assert (tmp_path / "ids.txt").read_text().split("\n")[:2] == ["p1", "p2"]
    np.testing.assert_array_equal(matrix, np.array([[1, 2], [3, 4]], np.float32))


_VALID = b'{"post_id": "a", "values": [0.5, -1.25]}\n{"post_id": "b", "values": [2, 3e-3]}\n'


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_vector_files_read_or_fail_with_one_line(tmp_path_factory, data):
    body = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(body)))
        piece = data.draw(st.sampled_from([b"9" * 70, b"1e39", b"[", b"]", b"\xff", b"NaN", b"-", b",", b"\n",
                                           b'"', b"{}", b"1_0", b"\x00", b"e999", b"[" * 3000]))
        body[at:at] = piece if data.draw(st.booleans()) else b""
        if data.draw(st.booleans()) and len(body) > 1:
            del body[data.draw(st.integers(0, len(body) - 1))]
    tmp = tmp_path_factory.mktemp("fuzz")
    gz = data.draw(st.booleans())
    path = tmp / ("v.jsonl.gz" if gz else "v.jsonl")
    path.write_bytes(gzip.compress(bytes(body)) if gz else bytes(body))
    result, peak = _read(path, tmp)
    if isinstance(result, ItemVectorError):
        assert str(result).startswith(str(path)) and "\n" not in str(result)
    else:
        assert result.dtype == np.float32 and np.isfinite(result).all()
    assert peak < (32 << 20)


# ---- the input pre-check ----

def test_a_glob_matching_a_directory_or_a_broken_link_names_it(tmp_path):
    (tmp_path / "a.tsv").write_text(HEADER + "\n")
    (tmp_path / "b.tsv").mkdir()
    with pytest.raises(IngestError, match=r"b\.tsv: matches the input pattern .* is a directory"):
        expand_pattern(str(tmp_path / "*.tsv"))
    (tmp_path / "b.tsv").rmdir()
    (tmp_path / "c.tsv").symlink_to(tmp_path / "c.tsv")  # a symlink loop
    with pytest.raises(IngestError, match=r"c\.tsv: matches the input pattern .* cannot be read"):
        expand_pattern(str(tmp_path / "*.tsv"))


def test_a_gz_that_is_plain_text_names_the_file(tmp_path):
    path = tmp_path / "logs.tsv.gz"
    path.write_text(HEADER + "\n")
    with pytest.raises(IngestError, match=rf"{path}: cannot read the file"):
        check_headers([str(path)], SPEC)


# ---- the training guard ----

def test_training_stops_at_the_first_non_finite_weight_and_names_it():
    from model.callbacks import NonFiniteTrainingError, StopOnNonFinite

    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,), name="dense")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.array([[1.0, 2.0]] * 8, np.float32)
    y = np.array([[1.0]] * 8, np.float32)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[StopOnNonFinite(weights_every=1)])  # finite: no error
    model.layers[0].bias.assign([np.nan])  # step 1's update spreads the NaN to the kernel (checked first)
    with pytest.raises(NonFiniteTrainingError, match=r"training stopped at step 1: the loss is nan; "
                                                     r"first non-finite weight: dense/kernel"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[StopOnNonFinite()])


def test_a_weight_that_becomes_inf_is_caught_by_the_periodic_check():
    from model.callbacks import NonFiniteTrainingError, StopOnNonFinite

    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,), name="dense"),
                                 tf.keras.layers.Dense(1, name="unused", trainable=True)])
    model.compile(optimizer="sgd", loss="mse")
    guard = StopOnNonFinite(weights_every=1)
    guard.set_model(model)
    model.layers[1].kernel.assign([[np.inf]])
    with pytest.raises(NonFiniteTrainingError, match="first non-finite weight: unused/kernel"):
        guard.check_weights()


def test_infra_validation_counts_the_distinct_inputs_of_a_tower():
    from components.infra_validator import distinct_inputs

    def example(user, post):
        ex = tf.train.Example()
        ex.features.feature["client_id"].bytes_list.value.append(user.encode())
        ex.features.feature["post_id"].bytes_list.value.append(post.encode())
        return ex.SerializeToString()

    examples = [example("u1", "p1"), example("u1", "p2"), example("u2", "p2")]
    assert distinct_inputs(examples, ["client_id"]) == 2
    assert distinct_inputs(examples, ["post_id"]) == 2
    assert distinct_inputs(examples, ["client_id", "post_id"]) == 3
    assert distinct_inputs(examples[:1] * 4, ["client_id", "post_id"]) == 1


# ---- recall ----

def test_recall_excludes_every_read_post_beyond_maxlen(tmp_path):
    from retrieval.index import IndexConfig
    from retrieval.milvus import Batch, MilvusIndex, connect, write_generation
    from retrieval.recall import Recaller
    from tests.made_up import NoContent

    maxlen = next(f.maxlen for f in SPEC.features if f.column == "read_post_id")
    n, dim = 200, 8
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"p{i}" for i in range(n)]
    config = IndexConfig(uri=str(tmp_path / "m.db"), alias="items")
    client = connect(config)
    write_generation(config, [Batch(ids, {"topic_id": ["t"] * n}, vectors)], "post_id", ["topic_id"], dim,
                     client=client)
    query = rng.normal(size=dim).astype(np.float32)
    scores = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    ranked = [ids[i] for i in np.argsort(-scores)]
    # maxlen posts the model ranks last, then the 10 it ranks first: the example keeps only the first maxlen.
    read = ranked[-maxlen:] + ranked[:10]
    recaller = Recaller(lambda examples, version=None: np.tile(query, (len(examples), 1)),
                        MilvusIndex(config, client=client),
                        SPEC, NoContent())
    user = {"client_type": 1, "follow_topic_id": "t1", "all_topic_fav_7": "t1:1", "read_post_id": read}
    (hits,) = recaller.recall([user], k=10)
    assert [h["id"] for h in hits] == ranked[10:20]
    line = "\t".join(["0", "u1", "x", "1", "t1", "t1:1", "t1", ",".join(read)])
    (hits,) = recaller.recall_log_lines([line], k=10)
    assert [h["id"] for h in hits] == ranked[10:20]
    for bad_k in (0, -1, -5, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            recaller.recall([user], k=bad_k)
    for field in ("nope", "embedding"):
        with pytest.raises(ValueError, match=rf"cannot filter on \['{field}'\]"):
            recaller.recall([user], k=3, filters={field: ["3"]})
    with pytest.raises(ValueError, match="list of JSON objects"):
        recaller.recall([[]], k=3)
    with pytest.raises(ValueError, match="no users"):
        recaller.recall([], k=3)
    client.close()


def test_recall_cli_errors_are_one_line(runs, tmp_path_factory):
    import subprocess
    import sys

    from tests.conftest import REPO, holding_the_shared_run

    workdir = runs[0]
    base = [sys.executable, "-m", "retrieval.recall", "--milvus", f"{workdir}/milvus.db",
            "--model", f"{workdir}/serving/dssm"]
    user = json.dumps({"client_type": 1, "read_post_id": "p1"})
    # Two processes (each loads TensorFlow); the other bad k, filters and features are checked in
    # process by test_recall_excludes_every_read_post_beyond_maxlen.
    for extra, message in [(["--features", user, "--filter", "embedding=3", "--k", "5"],
                            "error: cannot filter on ['embedding']"),
                           (["--features", "[]"], "error: --features takes a JSON object")]:
        with holding_the_shared_run(tmp_path_factory):  # the run's Milvus Lite file: one process at a time
            proc = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and proc.stdout == ""
        assert proc.stderr.strip().splitlines()[-1].startswith(message), (extra, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


# ---- end to end ----

def test_one_float32_overflow_row_is_rejected_and_the_model_is_the_clean_one(runs, tmp_path):
    """The sample's rows in reverse order plus one row whose weight is 1e39 (finite in float64, inf in
    float32): the row is rejected and counted, and the model is the clean sample's (it once trained
    to AUC 0.5), weight for weight: the same rows train the same model in any order."""
    from tests.conftest import SAMPLE_DIR, run_local

    _, clean, _ = runs
    lines = open(f"{SAMPLE_DIR}/train.tsv").read().splitlines()
    fields = lines[1].split("\t")
    fields[SPEC.columns.index("all_topic_fav_7")] = "3:1e39"
    rows = lines[1:][::-1]
    poisoned = tmp_path / "train.tsv"
    poisoned.write_text("\n".join([lines[0], *rows[:100], "\t".join(fields), *rows[100:]]) + "\n")
    summary = run_local(tmp_path / "run", "--train", str(poisoned), "--eval", f"{SAMPLE_DIR}/eval.tsv",
                        "--item-embeddings", f"{SAMPLE_DIR}/item_vectors.jsonl", "--until", "RetrievalEvaluator")
    train = summary["splits"]["train"]
    assert train["read"] == clean["splits"]["train"]["read"] + 1
    assert train["written"] == clean["splits"]["train"]["written"]
    assert train["rejected_by_reason"] == {"bad_weight:all_topic_fav_7": 1}
    both = {name: {k: s["training"][k] for k in ("best_step", "eval_curve", "input")}
            for name, s in (("poisoned", summary), ("clean", clean))}
    weights, clean_weights = summary["training"]["weight_sums"], clean["training"]["weight_sums"]
    assert weights.keys() == clean_weights.keys()
    for name, total in weights.items():
        assert total == pytest.approx(clean_weights[name], rel=1e-9, abs=1e-9), (name, both)
    assert summary["retrieval"]["eval_auc"] == pytest.approx(clean["retrieval"]["eval_auc"], abs=1e-9)
    for key in ("recall@50", "hit_rate@50"):
        assert summary["retrieval"]["model"][key] == pytest.approx(clean["retrieval"]["model"][key], abs=1e-9), key


@pytest.mark.parametrize("pattern", ["*.tsv", "logs/*.tsv", "*/*.tsv", "logs/day?/*.tsv", "logs/day[12]/a.tsv",
                                     "logs/.hidden*", "logs/*", "nope/*.tsv", "logs/a.tsv", "logs/day1"])
def test_the_pre_check_glob_matches_what_tensorflow_matches(tmp_path, pattern):
    from schema.logfiles import glob_files

    for path in ["a.tsv", "logs/a.tsv", "logs/.hidden.tsv", "logs/day1/a.tsv", "logs/day2/a.tsv", "logs/day3/b.tsv",
                 "x/y/z.tsv"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(HEADER + "\n")
    (tmp_path / "logs" / "d.tsv").mkdir()
    full = str(tmp_path / pattern)
    assert glob_files(full) == sorted(tf.io.gfile.glob(full))
