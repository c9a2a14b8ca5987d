import gzip
import json

import numpy as np
import pytest

from schema.item_vectors import ItemVectorError, load_table, prepare_item_vectors, read_item_vectors


def _read(path, tmp_path):
    """(ids, matrix) as read_item_vectors gives them: the ids from the file it writes."""
    ids_path = tmp_path / "ids.out"
    matrix = read_item_vectors(path, str(ids_path))
    return ids_path.read_text().splitlines(), matrix


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_and_gzip_read_the_same(tmp_path):
    rows = [{"post_id": "a", "values": [1.0, 2.0]}, {"post_id": 7, "values": [3, 4]}]
    plain = _write_jsonl(tmp_path / "v.jsonl", rows)
    with gzip.open(tmp_path / "v.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for path in (plain, str(tmp_path / "v.jsonl.gz")):
        ids, m = _read(path, tmp_path)
        assert ids == ["a", "7"]
        np.testing.assert_array_equal(m, [[1, 2], [3, 4]])


def test_npy_with_ids_file(tmp_path):
    np.save(tmp_path / "v.npy", np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    (tmp_path / "v.ids.txt").write_text("x\ny\n")
    ids, m = _read(str(tmp_path / "v.npy"), tmp_path)
    assert ids == ["x", "y"] and m.shape == (2, 2)
    (tmp_path / "v.ids.txt").write_text("x\nx\n")  # an error in the ids names the ids file and its line
    with pytest.raises(ItemVectorError, match=r"v\.ids\.txt:2: duplicate post_id 'x'"):
        _read(str(tmp_path / "v.npy"), tmp_path)


@pytest.mark.parametrize("rows, message", [
    ([{"post_id": "a", "values": [1.0, 2.0]}, {"post_id": "b", "values": [1.0]}], r":2: post_id 'b' has 1 values"),
    ([{"post_id": "a", "values": [1.0]}, {"post_id": "a", "values": [2.0]}], r":2: duplicate post_id 'a'"),
    ([{"post_id": p, "values": [1.0]} for p in ["x", "y", "z", "y", "x"]], r":4: duplicate post_id 'y'"),
    ([{"id": "a", "values": [1.0]}], r":1: expected"),
    ([{"post_id": "a", "values": ["x"]}], r":1: values of post_id 'a' must be"),
    ([], "no item vectors"),
])
def test_bad_files_name_the_line_and_problem(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "v.jsonl", rows)
    with pytest.raises(ItemVectorError, match=message):
        _read(path, tmp_path)


def test_not_json_at_all(tmp_path):
    (tmp_path / "v.jsonl").write_text("post_id,values\na,1 2 3\n")
    with pytest.raises(ItemVectorError, match=r"v.jsonl:1: not a JSON object"):
        _read(str(tmp_path / "v.jsonl"), tmp_path)


def test_prepare_writes_zero_row_and_is_reused(tmp_path):
    path = _write_jsonl(tmp_path / "v.jsonl", [{"post_id": "a", "values": [1.0, 2.0]},
                                                {"post_id": "b", "values": [3.0, 4.0]}])
    prepared = prepare_item_vectors(path, str(tmp_path / "out"))
    assert (prepared.dim, prepared.count) == (2, 2)
    np.testing.assert_array_equal(load_table(prepared.dir), [[0, 0], [1, 2], [3, 4]])
    assert open(prepared.ids_path).read() == "a\nb\n"
    assert prepare_item_vectors(path, str(tmp_path / "out")) == prepared
    with pytest.raises(ItemVectorError, match="pretrained_dim 768, the file's vectors have 2"):
        prepare_item_vectors(path, str(tmp_path / "out"), expected_dim=768)


def test_local_vector_files_are_prepared_and_read_without_tensorflow(tmp_path):
    """The serving client reads the run's prepared vectors; it took 7 s because reading them imported
    TensorFlow (for tf.io.gfile). Local paths now use Python's own file calls: the table read back
    equals the file's numbers, and TensorFlow's runtime was never imported."""
    import subprocess
    import sys

    from tests.conftest import REPO

    rows = [{"post_id": "a", "values": [0.5, -1.25]}, {"post_id": "b", "values": [3.0, 0.125]}]
    src = tmp_path / "v.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    code = ("import sys, json\n"
            "from schema.item_vectors import VectorTable, prepare_item_vectors\n"
            f"prepared = prepare_item_vectors({str(src)!r}, {str(tmp_path / 'out')!r})\n"
            "table = VectorTable.load(prepared.dir)\n"
            "print(json.dumps({'ids': table.ids, 'b': table.vectors(['b', 'nope']).tolist(),\n"
            "                  'tf': 'tensorflow.python' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out == {"ids": ["a", "b"], "b": [[3.0, 0.125], [0.0, 0.0]], "tf": False}
