"""Places kept for posts the model does not know (recall's --new-posts), and how a generation learns
which posts those are (retrieval.catalog.ModelVocabulary). Expected answers worked out by hand."""
import dataclasses

import pytest

from retrieval.catalog import ModelVocabulary
from retrieval.recall import reserve_new_posts
from schema.spec import load_spec


def _hits(*pairs):
    return [{"id": i, "score": s} for i, s in pairs]


def test_the_reserved_new_posts_are_in_and_the_best_of_the_rest_fill_the_places():
    hits = _hits(("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6))
    new = _hits(("x", 0.5), ("y", 0.4))
    assert [h["id"] for h in reserve_new_posts(hits, new, 4)] == ["a", "b", "x", "y"]


def test_a_new_post_already_in_the_top_k_takes_no_extra_place():
    hits = _hits(("a", 0.9), ("x", 0.8), ("b", 0.7), ("c", 0.6))
    new = _hits(("x", 0.8), ("y", 0.4))
    assert [h["id"] for h in reserve_new_posts(hits, new, 4)] == ["a", "x", "b", "y"]
    assert [h["id"] for h in reserve_new_posts(hits, _hits(("x", 0.8)), 4)] == ["a", "x", "b", "c"]


def test_fewer_new_posts_than_asked_leave_their_places_to_the_others():
    hits = _hits(("a", 0.9), ("b", 0.8), ("c", 0.7))
    assert [h["id"] for h in reserve_new_posts(hits, [], 3)] == ["a", "b", "c"]


def _model(tmp_path, versions: dict[int, list[str]]):
    for version, ids in versions.items():
        assets = tmp_path / "dssm" / str(version) / "assets"
        assets.mkdir(parents=True)
        (assets / "vocab_post_id").write_text("".join(f"{i}\n" for i in ids))
    return str(tmp_path / "dssm")


def test_the_vocabulary_of_the_asked_version_decides(tmp_path):
    base = _model(tmp_path, {3: ["p1", "p2"], 7: ["p2", "p9"]})
    vocabulary = ModelVocabulary(base, load_spec())
    assert vocabulary.flags(3, ["p1", "p2", "p9", "new"]) == ["1", "1", "0", "0"]
    assert vocabulary.flags(7, ["p1", "p2", "p9", "new"]) == ["0", "1", "1", "0"]
    assert vocabulary.flags(None, ["p1", "p9"]) == ["0", "1"]  # no version recorded: the latest
    one_version = ModelVocabulary(f"{base}/3", load_spec())  # a version directory itself
    assert one_version.flags(3, ["p1", "p9"]) == ["1", "0"]


def test_a_version_without_its_vocabulary_is_an_error_that_names_the_file(tmp_path):
    base = _model(tmp_path, {3: ["p1"]})
    with pytest.raises(ValueError, match=r"model version 4 knows: no .*dssm/4/assets/vocab_post_id"):
        ModelVocabulary(base, load_spec()).flags(4, ["p1"])


def test_a_spec_without_item_ids_knows_no_post_by_id(tmp_path):
    spec = load_spec()
    content_only = dataclasses.replace(spec, features=tuple(f for f in spec.features
                                                           if f.name not in ("post_id", "read_post_id")))
    assert ModelVocabulary(str(tmp_path / "nowhere"), content_only).flags(1, ["p1", "p2"]) == ["0", "0"]
