"""Export: save -> reload gives the in-memory towers' outputs, over tf.Examples and raw tensors alike."""
import numpy as np
import pytest
import tensorflow as tf

from model.config import TrainerConfig
from model.export import export
from model.preprocessing import vocab_size_with_reserved
from model.towers import build_towers
from tests.conftest import RAW

TABLE = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]], np.float32)
CONTENT = {"p1": TABLE[1], "p2": TABLE[2], "p3": TABLE[3]}  # the tiny transform's ids file: p1, p2, p3


def _vector(post: str) -> list[float]:
    return CONTENT.get(post, np.zeros(3, np.float32)).tolist()


def _example(row, content: bool = True) -> bytes:
    """A raw row as a tf.Example; with content, the vectors by value as a client sends them: the post's
    own (none for a post without one) and one per read post (zeros for a post without one)."""
    ex = tf.train.Example()
    if content:
        if row["post_id"] in CONTENT:
            ex.features.feature["item_embed"].float_list.value.extend(_vector(row["post_id"]))
        ex.features.feature["client_embed"].float_list.value.extend(
            [v for p in row["read_post_id"] for v in _vector(p)])
    for key, value in row.items():
        values = value if isinstance(value, list) else [value]
        f = ex.features.feature[key]
        if key == "all_topic_fav_7_weight":
            f.float_list.value.extend(values)
        elif isinstance(values[0] if values else "", int):
            f.int64_list.value.extend(values)
        else:
            f.bytes_list.value.extend(v.encode() for v in values)
    return ex.SerializeToString()


def _padded(lists, fill):
    width = max(1, max(len(x) for x in lists))
    return [x + [fill] * (width - len(x)) for x in lists]


@pytest.fixture(scope="module")
def exported(spec, tiny_transform, tmp_path_factory):
    _, tft_output = tiny_transform
    sizes = {g: vocab_size_with_reserved(tft_output, g, 1) for g in spec.vocab_groups()}
    towers = build_towers(spec, sizes, TABLE, TrainerConfig(user_units=[8, 4], item_units=[8, 4], gamma=3.0))
    path = str(tmp_path_factory.mktemp("export") / "Format-Serving")
    export(towers, tft_output, spec, path)
    return towers, tft_output, path


def test_reloaded_signatures_equal_the_in_memory_towers(spec, exported):
    towers, tft_output, path = exported
    examples = tf.constant([_example(r) for r in RAW])
    parse = spec.raw_feature_spec(include_label=False, serving=True)
    # The training path: Transform's rows looked up in the frozen table (no vector in the examples).
    t = tft_output.transform_features_layer()(tf.io.parse_example(
        tf.constant([_example(r, content=False) for r in RAW]), parse))
    want_user = towers.user(towers.tower_inputs(t, "user")).numpy()
    want_item = towers.item(towers.tower_inputs(t, "item")).numpy()

    model = tf.saved_model.load(path)
    user = model.signatures["user_embedding"](examples=examples)["embedding"].numpy()
    item = model.signatures["item_embedding"](examples=examples)["embedding"].numpy()
    score = model.signatures["serving_default"](examples=examples)["score"].numpy()
    np.testing.assert_allclose(user, want_user, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item, want_item, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-3.0 * (want_user * want_item).sum(1))), rtol=1e-5, atol=1e-6)


def test_raw_tensor_signatures_equal_the_example_signatures(exported):
    _, _, path = exported
    model = tf.saved_model.load(path)
    examples = tf.constant([_example(r) for r in RAW])
    raw_user = model.signatures["user_embedding_raw"](
        client_type=tf.constant([r["client_type"] for r in RAW], tf.int64),
        follow_topic_id=tf.constant(_padded([r["follow_topic_id"] for r in RAW], "")),
        all_topic_fav_7=tf.constant(_padded([r["all_topic_fav_7"] for r in RAW], "")),
        all_topic_fav_7_weight=tf.constant(_padded([r["all_topic_fav_7_weight"] for r in RAW], 0.0)),
        read_post_id=tf.constant(_padded([r["read_post_id"] for r in RAW], "")),
        client_embed=tf.constant(_padded([[_vector(p) for p in r["read_post_id"]] for r in RAW], [9.0] * 3)))
    raw_user = raw_user["embedding"]  # the padded entries' vectors (9s) are ignored
    np.testing.assert_allclose(raw_user.numpy(), model.signatures["user_embedding"](examples=examples)["embedding"],
                               rtol=1e-5, atol=1e-6)
    raw_item = model.signatures["item_embedding_raw"](
        post_id=tf.constant([r["post_id"] for r in RAW]), topic_id=tf.constant([r["topic_id"] for r in RAW]),
        item_embed=tf.constant([_vector(r["post_id"]) for r in RAW]))
    np.testing.assert_allclose(raw_item["embedding"].numpy(),
                               model.signatures["item_embedding"](examples=examples)["embedding"], rtol=1e-5, atol=1e-6)


def test_single_tower_models(exported):
    _, _, path = exported
    full = tf.saved_model.load(path)
    examples = tf.constant([_example(r) for r in RAW])
    for tower in ("user", "item"):
        alone = tf.saved_model.load(f"{path}-{tower}")
        other = "item" if tower == "user" else "user"
        assert set(alone.signatures) == {"serving_default", f"{tower}_embedding", f"{tower}_embedding_raw"}
        assert f"{other}_embedding" not in alone.signatures
        want = full.signatures[f"{tower}_embedding"](examples=examples)["embedding"].numpy()
        for sig in ("serving_default", f"{tower}_embedding"):
            np.testing.assert_allclose(alone.signatures[sig](examples=examples)["embedding"].numpy(), want,
                                       rtol=1e-6)


@pytest.mark.parametrize("weight,message", [(float("nan"), "a weight is not a finite number"),
                                            (float("inf"), "a weight is not a finite number"),
                                            (-1.0, "a weight is below 0")])
def test_the_signatures_refuse_weights_the_log_parser_refuses(exported, weight, message):
    """Issue [server-trust] 10: a NaN, infinite or negative weight gave a vector (NaN, Infinity and
    3.4e39 the same one). The parser rejects such rows (bad_weight); the signatures refuse them too."""
    _, _, path = exported
    model = tf.saved_model.load(path)
    good = {**RAW[0], "all_topic_fav_7": ["t1", "t2"], "all_topic_fav_7_weight": [0.5, 2.0]}
    model.signatures["user_embedding"](examples=tf.constant([_example(good)]))  # the control: answered
    bad = {**good, "all_topic_fav_7_weight": [0.5, weight]}
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"all_topic_fav_7_weight: {message}"):
        model.signatures["user_embedding"](examples=tf.constant([_example(bad)]))
    raw = model.signatures["user_embedding_raw"]
    values = {"client_type": [1], "follow_topic_id": [["t1"]], "all_topic_fav_7": [["t1", "t2"]],
              "all_topic_fav_7_weight": [[0.5, weight]], "read_post_id": [["p1"]], "client_embed": [[[1.0, 0, 0]]]}
    specs = raw.structured_input_signature[1]
    inputs = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in values.items() if k in specs}
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"all_topic_fav_7_weight: {message}"):
        raw(**inputs)


def test_the_serving_contract_counts_every_padded_feature(exported):
    """Worked out by hand from the spec: user = client_type 8 + follow_topic_id 20 x 16 + all_topic_fav_7
    5 x 16 + read_post_id 50 x 3 (client_embed: TABLE's width) + read_post_id 50 x 32 (its ids, in post_id's
    table) = 2158; item = topic_id 16 + post_id 32 + item_embed 3 = 51."""
    import json
    import os

    _, _, path = exported
    with open(os.path.join(path, "assets.extra", "serving_contract.json")) as f:
        contract = json.load(f)
    rows = {k: v["floats_per_row"] for k, v in contract["signatures"].items()}
    assert rows == {"user_embedding": 2158, "user_embedding_raw": 2158, "item_embedding": 51,
                    "item_embedding_raw": 51, "serving_default": 2209}
    assert contract["minimum"] == {"all_topic_fav_7_weight": 0.0}
    with open(os.path.join(path + "-user", "assets.extra", "serving_contract.json")) as f:
        user = json.load(f)["signatures"]
    assert {k: v["floats_per_row"] for k, v in user.items()} == {
        "serving_default": 2158, "user_embedding": 2158, "user_embedding_raw": 2158}


def _item_vectors(model, posts: list[tuple[str, str, list[float] | None]]) -> np.ndarray:
    examples = []
    for post, topic, vector in posts:
        ex = tf.train.Example()
        ex.features.feature["post_id"].bytes_list.value.append(post.encode())
        ex.features.feature["topic_id"].bytes_list.value.append(topic.encode())
        if vector is not None:
            ex.features.feature["item_embed"].float_list.value.extend(vector)
        examples.append(ex.SerializeToString())
    return model.signatures["item_embedding"](examples=tf.constant(examples))["embedding"].numpy()


def test_a_post_unknown_to_the_model_is_embedded_by_its_content(exported):
    """Issue [fresh-items]: two new posts of one topic got the same item vector (cosine 1.000000), the
    row 0 of a table frozen at training. Content by value: a post the run never saw, sent with a known
    post's vector, gets what that post's content gives an unknown id; two different vectors differ."""
    towers, _, path = exported
    model = tf.saved_model.load(path)
    new_a, new_b, same_as_p2 = _item_vectors(model, [("new-a", "t1", [0.0, 0.0, 3.0]), ("new-b", "t1", [1.0, 0, 0]),
                                                     ("new-c", "t1", [0.0, 2.0, 0.0])])
    assert float(new_a @ new_b) < 0.999  # normalised vectors: cosine
    # By hand through the in-memory item tower: the unknown id's OOV row, topic t1, the vector given.
    oov = towers.item.get_layer("embed_post_id").input_dim - 1
    topic_t1 = 1  # index 1: t1 is the topic vocabulary's most frequent value (3 of 5 topic values)
    want = towers.item({"post_id_xf": tf.constant([oov]), "topic_id_xf": tf.constant([topic_t1]),
                        "item_embed": tf.constant([[0.0, 2.0, 0.0]])}).numpy()[0]
    np.testing.assert_allclose(same_as_p2, want, rtol=1e-5, atol=1e-6)


def test_reads_of_posts_unknown_to_the_model_move_the_user(exported):
    """Issue [fresh-items]: two users who read different new posts got the same vector. Now each read
    post's vector shapes the user. Posts without vectors (zeros) and unknown ids are all the model has of
    a history: two such histories are the same user (they differ from the empty history: the read
    ids' out-of-vocabulary row says that the user reads posts the model does not know)."""
    _, _, path = exported
    model = tf.saved_model.load(path)

    def user(read: list[str], vectors: list[list[float]]) -> np.ndarray:
        ex = tf.train.Example()
        ex.features.feature["client_type"].int64_list.value.append(0)
        ex.features.feature["read_post_id"].bytes_list.value.extend(p.encode() for p in read)
        ex.features.feature["client_embed"].float_list.value.extend(v for vec in vectors for v in vec)
        return model.signatures["user_embedding"](examples=tf.constant([ex.SerializeToString()]))["embedding"][0]

    a = user(["new-1", "new-2"], [[1.0, 0, 0], [0, 1.0, 0]])
    b = user(["new-3", "new-4"], [[0, 0, 1.0], [0, 0, 2.0]])
    assert float(np.dot(a, b)) < 0.999
    unknown = user(["new-1", "new-2"], [[0.0] * 3] * 2)
    np.testing.assert_allclose(unknown, user(["new-7", "new-8"], [[0.0] * 3] * 2), rtol=1e-6)
    assert float(np.dot(unknown, a)) < 0.999


@pytest.mark.parametrize("values,message", [
    ([1.0, 2.0], "item_embed: 3 values per post are needed"),
    ([1.0, float("nan"), 0.0], "item_embed: a value is not a finite number")])
def test_the_signatures_refuse_an_item_vector_that_does_not_fit(exported, values, message):
    _, _, path = exported
    model = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _item_vectors(model, [("new", "t1", values)])


def test_the_signatures_refuse_history_vectors_that_do_not_match_the_ids(exported):
    """Two read posts need 2 x 3 values: 5 (a lying length) or 9 are refused, never padded or cut."""
    _, _, path = exported
    model = tf.saved_model.load(path)
    for count in (5, 9):
        ex = tf.train.Example()
        ex.features.feature["read_post_id"].bytes_list.value.extend([b"p1", b"p2"])
        ex.features.feature["client_embed"].float_list.value.extend([1.0] * count)
        with pytest.raises(tf.errors.InvalidArgumentError, match="client_embed: 3 values per post of read_post_id"):
            model.signatures["user_embedding"](examples=tf.constant([ex.SerializeToString()]))
