"""Pushed-version retention: the newest N version folders stay, the rest go, nothing else is touched."""
from components.tower_pusher import prune_versions


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
