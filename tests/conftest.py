import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before any TensorFlow import, as at every entry point
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from schema.spec import load_spec  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "data", "sample")


@pytest.fixture(scope="session")
def spec():
    return load_spec()


def _row(act, client, post, ctype, follow, fav, topic, read):
    return {"act": act, "client_id": client, "post_id": post, "client_type": ctype,
            "follow_topic_id": follow, "all_topic_fav_7": [k for k, _ in fav],
            "all_topic_fav_7_weight": [w for _, w in fav], "topic_id": topic, "read_post_id": read}


RAW = [
    _row(1, "u1", "p2", 0, ["t1", "t2"], [("t2", 0.5), ("t3", 0.25)], "t1", ["p1", "p3"]),
    _row(0, "u2", "p9", 1, [], [], "t1", ["p9", "p1"]),
    _row(0, "u3", "p3", 0, ["t3"], [("t1", 1.0)], "t2", []),
]


@pytest.fixture(scope="session")
def tiny_transform(spec, tmp_path_factory):
    """(transformed RAW rows, TFTransformOutput) of the real preprocessing_fn on three literal rows."""
    import functools
    import tempfile

    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    from components.preprocessing import preprocessing_fn
    from schema.generate import schema_from_spec

    tmp = tmp_path_factory.mktemp("tft")
    ids_path = tmp / "item_ids.txt"
    ids_path.write_text("p1\np2\np3\n")
    config = {"feature_spec": spec.to_json(), "num_oov_buckets": 1, "item_ids_path": str(ids_path)}
    metadata = dataset_metadata.DatasetMetadata(schema_from_spec(spec))
    out_dir = str(tmp / "transform_fn")
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=tmp)):
        (data, _), transform_fn = (RAW, metadata) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    ids_path.unlink()  # the saved graph must carry its own copy of the id file
    return data, tft.TFTransformOutput(out_dir)
