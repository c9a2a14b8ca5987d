"""serving.examples writes the vectors of a request as the proto's own packed bytes: they must be the
bytes protobuf itself writes, and the examples must hold exactly the vectors given."""
import numpy as np
import pytest
from tensorflow.core.example import example_pb2, feature_pb2

from schema.spec import load_spec
from serving.examples import ExampleBuilder, float_feature_bytes


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 4095, 4096, 50 * 768])  # lengths around varint boundaries
def test_float_feature_bytes_are_protobufs_own_serialization(n):
    values = np.random.default_rng(n).normal(size=n).astype(np.float32)
    by_protobuf = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values.tolist())).SerializeToString()
    assert float_feature_bytes(values) == by_protobuf
    parsed = feature_pb2.Feature.FromString(float_feature_bytes(values))
    np.testing.assert_array_equal(np.asarray(parsed.float_list.value, np.float32), values)


def test_float64_values_are_stored_as_float32_as_protobuf_rounds_them():
    values = [0.1, 1e-46, 3.4e38, -2.5]
    by_protobuf = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values)).SerializeToString()
    assert float_feature_bytes(np.asarray(values)) == by_protobuf


class _Table:
    dim = 4

    def __init__(self):
        self.rows = {"p1": [1.0, 2.0, 3.0, 4.0], "p2": [-1.0, 0.5, 0.25, 8.0]}

    def vectors(self, ids):
        return np.asarray([self.rows.get(i, [0.0] * 4) for i in ids], np.float32)


def test_a_requests_vectors_are_the_posts_own_in_history_order():
    spec = load_spec()
    builder = ExampleBuilder(spec, _Table())
    own = np.asarray([9.0, 8.0, 7.0, 6.0], np.float32)
    item = example_pb2.Example.FromString(builder.from_features({"post_id": "new", "topic_id": "t1"}, item_vector=own))
    assert list(item.features.feature["item_embed"].float_list.value) == [9.0, 8.0, 7.0, 6.0]
    user = example_pb2.Example.FromString(builder.from_features({"read_post_id": "p2,unknown,p1"}))
    assert list(user.features.feature["client_embed"].float_list.value) == [
        -1.0, 0.5, 0.25, 8.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]  # zeros: a post without a vector
