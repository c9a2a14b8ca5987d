import copy

import pytest

from schema.generate import read_schema, schema_from_spec
from schema.spec import DEFAULT_SCHEMA_PATH, FeatureSpec, SpecError, transformed_name


def _base(spec):
    return copy.deepcopy(spec.to_dict())


def test_default_spec_expresses_the_original_features(spec):
    kinds = {f.name: (f.kind, f.tower) for f in spec.features}
    assert kinds == {
        "topic_id": ("sparse", "item"), "client_type": ("sparse", "user"),
        "follow_topic_id": ("varlen", "user"), "all_topic_fav_7": ("varlen", "user"),
        "post_id": ("sparse", "item"), "read_post_id": ("varlen", "user"),
        "item_embed": ("pretrained", "item"), "client_embed": ("pretrained", "user")}
    groups = spec.vocab_groups()
    assert [f.name for f in groups["topic_id"]] == ["topic_id", "follow_topic_id", "all_topic_fav_7"]
    assert [f.name for f in groups["client_type"]] == ["client_type"]
    assert [f.name for f in groups["post_id"]] == ["post_id", "read_post_id"]
    assert spec.raw_feature_names() == [
        "act", "client_id", "post_id", "client_type", "follow_topic_id", "all_topic_fav_7",
        "all_topic_fav_7_weight", "topic_id", "read_post_id"]


def test_spec_round_trips_through_json(spec):
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert "weight" not in spec.to_dict()  # no weight: the JSON (a cache key) is as before
    d = _base(spec)
    d.update(columns=d["columns"] + ["w"], weight="w")
    weighted = FeatureSpec.from_dict(d)
    assert FeatureSpec.from_json(weighted.to_json()) == weighted and weighted.weight == "w"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["features"]["follow_topic_id"].update(share_embed="nope"), "share_embed target 'nope'"),
    (lambda d: d["features"]["follow_topic_id"].update(maxlen=0), "maxlen must be a positive integer"),
    (lambda d: d["features"]["topic_id"].update(weight_name="w"), "weight_name is only allowed"),
    (lambda d: d["features"]["topic_id"].update(tower="none"), "tower must be one of"),
    (lambda d: d["features"]["client_embed"].update(reduce="max"), "reduce must be one of"),
    (lambda d: d["features"]["follow_topic_id"].update(reduce="attention"), "reduce of a varlen feature is one of"),
    (lambda d: d["features"]["all_topic_fav_7"].update(reduce="position"), "weighted sum; reduce does not apply"),
    (lambda d: d["features"]["topic_id"].update(reduce="mean"), "reduce applies to list features only"),
    (lambda d: d.update(columns=d["columns"] + ["extra"]), "used by no feature"),
    (lambda d: d.update(label="missing"), "label column 'missing' is not in columns"),
    (lambda d: d.update(weight="w"), "weight column 'w' is not in columns"),
    (lambda d: d.update(weight="act"), "weight column 'act' is also the label"),
])
def test_spec_errors_name_the_problem(spec, mutate, message):
    d = _base(spec)
    mutate(d)
    with pytest.raises(SpecError, match=message):
        FeatureSpec.from_dict(d)


def test_committed_schema_matches_the_spec(spec):
    committed = read_schema(DEFAULT_SCHEMA_PATH)
    assert committed == schema_from_spec(spec), "regenerate with `python -m schema.generate`"


def test_the_item_index_is_not_the_name_of_a_feature_that_embeds_the_item_id(spec):
    d = _base(spec)
    d["features"]["post_id"] = {"kind": "sparse", "tower": "item", "embed_dim": 4}
    with_ids = FeatureSpec.from_dict(d)
    assert with_ids.item_index == "post_id_item_index" != transformed_name("post_id")
    d = _base(spec)
    d["columns"] = d["columns"] + ["post_id_item_index"]
    d["weight"] = "post_id_item_index"
    with pytest.raises(SpecError, match="name of the transformed item index"):
        FeatureSpec.from_dict(d)
