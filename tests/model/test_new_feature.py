"""Adding a multi-valued user feature, or a sample weight, is a change to the spec file and the data only.

The spec and the log below add `liked_topic_id` (a user's liked topics, sharing topic_id's table)
and a `w` column named as the spec's `weight`; nothing else changes: the parser, the schema,
tf.Transform and the towers pick them up from the spec.
"""
import functools
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
import yaml
from tensorflow_transform.tf_metadata import dataset_metadata

from model.config import TrainerConfig
from model.preprocessing import preprocessing_fn
from model.towers import build_towers, model_input_names, transformed_input_names
from schema.generate import schema_from_spec
from schema.rows import Rejected, RowParser
from schema.spec import DEFAULT_SPEC_PATH, STRING_LIST, FeatureSpec

LOG = [
    "1\tu1\tp1\t0\tt1\tt1:1\tt1\tp2\tt2,t3\t2.5",
    "0\tu2\tp2\t1\tt2\tt2:1\tt2\tp1\tt3,t3,t1\t1",
    "1\tu3\tp3\t0\tt1\tt1:1\tt3\t\t\t0",
]


def _extended_spec(tmp_path) -> FeatureSpec:
    with open(DEFAULT_SPEC_PATH) as f:
        d = yaml.safe_load(f)
    d["columns"].append("liked_topic_id")
    d["features"]["liked_topic_id"] = {"kind": "varlen", "tower": "user", "share_embed": "topic_id", "maxlen": 3}
    d["columns"].append("w")
    d["weight"] = "w"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return FeatureSpec.load(str(path))


def _instance(row, spec):
    out = {}
    for name, col in spec.raw_columns.items():
        values = row.ints.get(name) or row.strings.get(name) or row.floats.get(name) or []
        out[name] = values if col.type in (STRING_LIST, "weighted_list") else values[0]
        if col.weight_name:
            out[col.weight_name] = row.floats[col.weight_name]
    return out


def test_a_new_multivalued_user_feature_flows_through(tmp_path):
    spec = _extended_spec(tmp_path)
    assert spec.raw_columns["liked_topic_id"].type == STRING_LIST
    assert "liked_topic_id_xf" in model_input_names(spec, "user")
    assert [f.name for f in spec.vocab_groups()["topic_id"]][-1] == "liked_topic_id"

    parser = RowParser(spec)
    rows = [parser.parse(line.encode()) for line in LOG]
    assert rows[1].strings["liked_topic_id"] == [b"t3", b"t1"]  # duplicate dropped
    assert [r.floats["w"] for r in rows] == [[2.5], [1.0], [0.0]]
    for bad in ("-1", "x", "", "inf"):
        with pytest.raises(Rejected) as info:
            parser.parse(LOG[0].rsplit("\t", 1)[0].encode() + b"\t" + bad.encode())
        assert info.value.reason == "bad_weight:w"
    assert {"liked_topic_id", "w"} <= {f.name for f in schema_from_spec(spec).feature}
    assert "w" not in spec.raw_feature_spec(include_label=False, serving=True)  # not a serving input

    ids = tmp_path / "ids.txt"
    ids.write_text("p1\np2\np3\n")
    config = {"feature_spec": spec.to_json(), "num_oov_buckets": 1, "item_ids_path": str(ids)}
    metadata = dataset_metadata.DatasetMetadata(schema_from_spec(spec))
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=tmp_path)):
        (data, _), _ = ([_instance(r, spec) for r in rows], metadata) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=config))
    # Shared topic vocabulary over topic_id, follow, fav and liked: t1 x6, t2 x4, t3 x3
    # -> t1=1, t2=2, t3=3 (0 = padding).
    assert [d["liked_topic_id_xf"].tolist() for d in data] == [[2, 3, 0], [3, 1, 0], [0, 0, 0]]
    assert [float(d["w"]) for d in data] == [2.5, 1.0, 0.0]  # passed through for the trainer

    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4])
    towers = build_towers(spec, {"topic_id": 5, "client_type": 4, "post_id": 5}, np.zeros((4, 2), np.float32), cfg)
    batch = towers.tower_inputs({k: tf.constant(np.stack([d[k] for d in data]))
                                 for k in transformed_input_names(spec, "user")}, "user")
    assert "liked_topic_id_xf" in towers.user.input
    assert towers.user(batch).shape == (3, 4)
