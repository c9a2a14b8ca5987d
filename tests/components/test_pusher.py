"""Pushed-version retention: the newest N version folders stay, the rest go, nothing else is touched."""
import numpy as np

from components.tower_pusher import indexed_versions, prune_versions


def test_prune_keeps_the_newest_versions_by_number(tmp_path):
    for v in ("1", "2", "10", "9", "0003"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "models.config").write_text("")
    (tmp_path / ".tmp-11").mkdir()
    removed = prune_versions(str(tmp_path), keep=3)
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == ["1", "2"]  # numeric order: 0003 = 3 < 9 < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-11", "0003", "10", "9", "models.config"]


def test_keep_zero_keeps_everything_and_a_missing_folder_is_fine(tmp_path):
    for v in ("1", "2"):
        (tmp_path / v).mkdir()
    assert prune_versions(str(tmp_path), keep=0) == []
    assert prune_versions(str(tmp_path / "absent"), keep=1) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def test_a_version_an_index_generation_was_filled_by_is_never_pruned(tmp_path):
    for v in ("1", "2", "3", "4"):
        (tmp_path / v).mkdir()
    removed = prune_versions(str(tmp_path), keep=1, protected={2})
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == ["1", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "4"]


def test_the_protected_versions_are_read_from_the_index_generations(tmp_path):
    from retrieval.index import IndexConfig
    from retrieval.milvus import Batch, write_generation

    config = IndexConfig(uri=str(tmp_path / "m.db"), alias="items", keep_generations=2)
    as_dict = {"uri": config.uri, "alias": config.alias}
    assert indexed_versions(as_dict) == set()  # no index yet: nothing to protect
    for version in (5, 6, 7):  # keep_generations 2: the generation of 5 is dropped
        write_generation(config, [Batch(["a", "b"], {}, np.eye(2, dtype=np.float32))], "post_id", [], 2,
                         model_version=version)
    assert indexed_versions(as_dict) == {6, 7}
    assert indexed_versions(None) == set()

