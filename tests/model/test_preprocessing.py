"""Literal raw rows in, literal transformed rows out (tf.Transform's analyze-and-transform style)."""
import functools
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from model.preprocessing import preprocessing_fn
from schema.generate import schema_from_spec
from tests.conftest import RAW


def _pad(values, n):
    return list(values) + [0] * (n - len(values))


# topic group vocabulary over topic_id + follow_topic_id + all_topic_fav_7: t1 x4, t2 x3, t3 x2
# -> t1=1, t2=2, t3=3 (0 = padding), OOV = 4.  client_type: "0" x2 -> 1, "1" x1 -> 2.
# Pretrained rows from the id file p1, p2, p3 -> 1, 2, 3; unknown -> 0.
# Item index: p2, p9, p3 are seen once each; tf.Transform breaks frequency ties by descending value:
# p9=1, p3=2, p2=3. Clicks per item (logQ): only p2, once.
# post_id group vocabulary over post_id + read_post_id: p1, p3, p9 x2 each, p2 x1 -> p9=1, p3=2, p1=3, p2=4.
EXPECTED = [
    {"act": 1, "topic_id_xf": 1, "client_type_xf": 1, "follow_topic_id_xf": _pad([1, 2], 20),
     "all_topic_fav_7_xf": _pad([2, 3], 5), "all_topic_fav_7_weight_xf": _pad([0.5, 0.25], 5),
     "item_embed_xf": 2, "client_embed_xf": _pad([1, 3], 50), "oov_count_topic_id": 0, "oov_count_client_type": 0,
     "post_id_item_index": 3, "post_id_xf": 4, "read_post_id_xf": _pad([3, 2], 50), "oov_count_post_id": 0},
    {"act": 0, "topic_id_xf": 1, "client_type_xf": 2, "follow_topic_id_xf": _pad([], 20),
     "all_topic_fav_7_xf": _pad([], 5), "all_topic_fav_7_weight_xf": _pad([], 5),
     "item_embed_xf": 0, "client_embed_xf": _pad([0, 1], 50), "oov_count_topic_id": 0, "oov_count_client_type": 0,
     "post_id_item_index": 1, "post_id_xf": 1, "read_post_id_xf": _pad([1, 3], 50), "oov_count_post_id": 0},
    {"act": 0, "topic_id_xf": 2, "client_type_xf": 1, "follow_topic_id_xf": _pad([3], 20),
     "all_topic_fav_7_xf": _pad([1], 5), "all_topic_fav_7_weight_xf": _pad([1.0], 5),
     "item_embed_xf": 3, "client_embed_xf": _pad([], 50), "oov_count_topic_id": 0, "oov_count_client_type": 0,
     "post_id_item_index": 2, "post_id_xf": 2, "read_post_id_xf": _pad([], 50), "oov_count_post_id": 0},
]


def test_literal_rows(tiny_transform):
    data, _ = tiny_transform
    assert len(data) == len(EXPECTED)
    for got, want in zip(data, EXPECTED, strict=True):
        assert set(got) == set(want)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, err_msg=key)


def test_shared_vocabulary_file(tiny_transform):
    _, output = tiny_transform
    assert output.vocabulary_by_name("vocab_topic_id") == [b"t1", b"t2", b"t3"]
    assert output.vocabulary_by_name("vocab_client_type") == [b"0", b"1"]
    assert output.vocabulary_by_name("vocab_post_id") == [b"p9", b"p3", b"p1", b"p2"]
    assert output.vocabulary_by_name("vocab_item_id") == [b"p9", b"p3", b"p2"]
    with open(output.vocabulary_file_by_name("item_positive_counts"), "rb") as f:
        assert f.read() == b"1 p2\n"


def test_transform_layer_maps_oov_and_works_without_the_id_file(tiny_transform, spec):
    _, output = tiny_transform
    raw = {"act": tf.constant([0], tf.int64), "client_id": tf.constant(["u"]), "post_id": tf.constant(["p1"]),
           "client_type": tf.constant([7], tf.int64), "topic_id": tf.constant(["never-seen"]),
           "follow_topic_id": tf.sparse.from_dense(tf.constant([["t3"]])),
           "all_topic_fav_7": tf.sparse.from_dense(tf.constant([["t2"]])),
           "all_topic_fav_7_weight": tf.sparse.from_dense(tf.constant([[2.0]])),
           "read_post_id": tf.sparse.from_dense(tf.constant([["p3"]]))}
    out = output.transform_features_layer()(raw)
    assert out["topic_id_xf"].numpy().tolist() == [4]       # OOV bucket
    assert out["oov_count_topic_id"].numpy().tolist() == [1]  # topic_id OOV; t3 and t2 are known
    assert out["oov_count_client_type"].numpy().tolist() == [1]
    assert out["client_type_xf"].numpy().tolist() == [3]    # OOV bucket of client_type
    assert out["item_embed_xf"].numpy().tolist() == [1]
    assert out["client_embed_xf"].numpy()[0, :2].tolist() == [3, 0]
    assert out["follow_topic_id_xf"].numpy()[0, :2].tolist() == [3, 0]


def test_top_k_sends_the_rest_out_of_vocabulary(spec, tmp_path):
    d = spec.to_dict()
    d["features"]["topic_id"]["vocab_top_k"] = 2  # keeps t1, t2; t3 becomes OOV (index 3 = V + 1)
    small = type(spec).from_dict(d)
    ids_path = tmp_path / "item_ids.txt"
    ids_path.write_text("p1\np2\np3\n")
    config = {"feature_spec": small.to_json(), "num_oov_buckets": 1, "item_ids_path": str(ids_path)}
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=tmp_path)):
        (data, _), _ = (RAW, dataset_metadata.DatasetMetadata(schema_from_spec(small))) | \
            tft_beam.AnalyzeAndTransformDataset(functools.partial(preprocessing_fn, custom_config=config))
    assert data[0]["follow_topic_id_xf"][:2].tolist() == [1, 2]
    assert data[0]["all_topic_fav_7_xf"][:2].tolist() == [2, 3]
    assert data[2]["follow_topic_id_xf"][:1].tolist() == [3]
    # t3 is out of vocabulary: once in row 0 (fav list) and once in row 2 (follow list).
    assert [d["oov_count_topic_id"] for d in data] == [1, 0, 1]

