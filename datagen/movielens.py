"""MovieLens (ml-latest-small) -> click logs in the input format, with a time-based split.

    python -m datagen.movielens --source ../shared/data/ml-latest-small --out data/movielens

Every rating is one logged impression. Columns (see docs/quality.md, "MovieLens"):
  act              1 if rating >= 4.0 (liked), else 0 (watched, not liked: a logged negative)
  client_id        userId;  post_id: movieId;  topic_id: the movie's first genre
  client_type      1 if the rating was given on a weekend (UTC), else 0
  follow_topic_id  the user's most frequent genres (up to 5) among the movies liked before the event
  all_topic_fav_7  genre:share over the genres of the user's last 20 rated movies before the event
  read_post_id     the user's last 50 rated movies before the event, most recent first
Only ratings with a strictly earlier timestamp feed an event's features (ratings given in the same
second are not "before" each other), so no event sees itself or the future.

Split: per user, the last liked event and everything the user rated after it go to eval; everything
before goes to train (users without a liked event are train only). The item vectors are the
dataset's item_embeddings.jsonl.gz (384-d), already in the input format.
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import os

from schema.spec import load_spec

FOLLOW_TOPICS = 5
FAV_WINDOW = 20
FAV_TOPICS = 5
HISTORY = 50


def load_movies(path: str) -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["movieId"]: row["genres"].split("|") for row in csv.DictReader(f)}


def load_ratings(path: str) -> dict[str, list[tuple[int, str, float]]]:
    """userId -> [(timestamp, movieId, rating)] in time order (ties by movieId, for determinism)."""
    by_user: dict[str, list] = collections.defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_user[row["userId"]].append((int(row["timestamp"]), row["movieId"], float(row["rating"])))
    for events in by_user.values():
        events.sort(key=lambda e: (e[0], int(e[1])))
    return by_user


def user_rows(user: str, events: list[tuple[int, str, float]], genres: dict[str, list[str]]) -> list[dict]:
    rows = []
    past = 0  # events[:past] have a timestamp strictly before the current event
    for i, (ts, movie, rating) in enumerate(events):
        while past < i and events[past][0] < ts:
            past += 1
        history = events[:past]
        liked_genres = collections.Counter(g for _, m, r in history if r >= 4.0 for g in genres[m])
        recent = history[-FAV_WINDOW:]
        recent_genres = collections.Counter(g for _, m, _ in recent for g in genres[m])
        total = sum(recent_genres.values())
        fav = sorted(recent_genres.items(), key=lambda kv: (-kv[1], kv[0]))[:FAV_TOPICS]
        weekend = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).weekday() >= 5
        rows.append({
            "act": "1" if rating >= 4.0 else "0",
            "client_id": user,
            "post_id": movie,
            "client_type": "1" if weekend else "0",
            "follow_topic_id": ",".join(g for g, _ in sorted(liked_genres.items(), key=lambda kv: (-kv[1], kv[0]))
                                        [:FOLLOW_TOPICS]),
            "all_topic_fav_7": ",".join(f"{g}:{n / total:.4f}" for g, n in fav),
            "topic_id": genres[movie][0],
            "read_post_id": ",".join(m for _, m, _ in reversed(history[-HISTORY:])),
            "_ts": ts,
        })
    return rows


def split_user(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, eval): eval = the last liked event and everything after it."""
    last_liked = max((i for i, r in enumerate(rows) if r["act"] == "1"), default=None)
    if last_liked is None:
        return rows, []
    return rows[:last_liked], rows[last_liked:]


def convert(source: str, out: str) -> dict:
    genres = load_movies(os.path.join(source, "movies.csv"))
    ratings = load_ratings(os.path.join(source, "ratings.csv"))
    columns = list(load_spec().columns)
    os.makedirs(out, exist_ok=True)
    counts = {"train": 0, "eval": 0, "eval_positives": 0, "users": len(ratings)}
    with open(os.path.join(out, "train.tsv"), "w", encoding="utf-8") as ftrain, \
            open(os.path.join(out, "eval.tsv"), "w", encoding="utf-8") as feval:
        for f in (ftrain, feval):
            f.write("\t".join(columns) + "\n")
        for user in sorted(ratings, key=int):
            train, eval_ = split_user(user_rows(user, ratings[user], genres))
            for f, rows, name in ((ftrain, train, "train"), (feval, eval_, "eval")):
                for r in rows:
                    f.write("\t".join(r[c] for c in columns) + "\n")
                counts[name] += len(rows)
            counts["eval_positives"] += sum(r["act"] == "1" for r in eval_)
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Convert MovieLens ml-latest-small to click logs.")
    p.add_argument("--source", required=True, help="folder with ratings.csv and movies.csv")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    missing = [n for n in ("ratings.csv", "movies.csv") if not os.path.isfile(os.path.join(a.source, n))]
    if missing:
        raise SystemExit(f"error: {a.source} lacks {', '.join(missing)}: give --source (make movielens ML_DIR=...) the "
                         f"folder of MovieLens ml-latest-small (https://grouplens.org/datasets/movielens/)")
    print(json.dumps(convert(a.source, a.out)))


if __name__ == "__main__":
    main()
