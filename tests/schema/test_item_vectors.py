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
