"""The MovieLens adapter: features from the past only, and the per-user time-based split."""
import csv
import os

import pytest

from datagen.movielens import convert, load_ratings
from tests.conftest import REPO

ML = os.path.join(os.path.dirname(REPO), "shared", "data", "ml-latest-small")


def _write(tmp_path, ratings, movies):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" +
                                          "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in ratings))
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" +
                                         "".join(f"{m},T{m},{g}\n" for m, g in movies))


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_hand_worked_user(tmp_path):
    # 2024-01-06 (Saturday) = 1704499200; one user, four ratings; two share a timestamp.
    sat = 1704499200
    day = 86400
    _write(tmp_path, [(1, 10, 5.0, sat), (1, 11, 3.0, sat), (1, 12, 4.5, sat + 2 * day), (1, 13, 2.0, sat + 3 * day)],
           [(10, "Drama|Crime"), (11, "Comedy"), (12, "Crime"), (13, "Horror")])
    counts = convert(str(tmp_path), str(tmp_path / "out"))
    train, eval_ = _read(tmp_path / "out" / "train.tsv"), _read(tmp_path / "out" / "eval.tsv")
    assert counts == {"train": 2, "eval": 2, "eval_positives": 1, "users": 1}
    # Movies 10 and 11 were rated in the same second: neither sees the other.
    assert [r["read_post_id"] for r in train] == ["", ""]
    assert [(r["act"], r["client_type"], r["topic_id"]) for r in train] == [("1", "1", "Drama"), ("0", "1", "Comedy")]
    # The last liked event (12, on a Monday) starts eval; 13 comes after it.
    first, second = eval_
    assert (first["post_id"], first["act"], first["client_type"]) == ("12", "1", "0")
    assert first["read_post_id"] == "11,10"           # most recent first; ties by movieId
    assert first["follow_topic_id"] == "Crime,Drama"  # genres of liked movies before: 10 only
    assert first["all_topic_fav_7"] == "Comedy:0.3333,Crime:0.3333,Drama:0.3333"
    assert second["read_post_id"] == "12,11,10"
    assert second["follow_topic_id"] == "Crime,Drama"  # 10 (Drama, Crime) and 12 (Crime): Crime x2


@pytest.mark.skipif(not os.path.exists(ML), reason="shared MovieLens data not present")
def test_real_data_has_no_leakage(tmp_path):
    counts = convert(ML, str(tmp_path))
    assert counts["train"] + counts["eval"] == 100836  # every rating is one row
    when = {(u, m): t for u, events in load_ratings(os.path.join(ML, "ratings.csv")).items() for t, m, _ in events}
    for name in ("train", "eval"):
        for row in _read(tmp_path / f"{name}.tsv"):
            t = when[(row["client_id"], row["post_id"])]
            history = [m for m in row["read_post_id"].split(",") if m]
            assert row["post_id"] not in history
            assert all(when[(row["client_id"], m)] < t for m in history)
