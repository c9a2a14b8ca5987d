"""reduce: attention, the history read as a sequence: SequenceEncoder against numpy on a tiny sequence
(the same weights), masking of padding and unknown ids, order, the empty history, the towers'
inputs and outputs unchanged, warm start across vocabularies."""
import numpy as np
import pytest
import tensorflow as tf

from model import warm_start
from model.config import TrainerConfig
from model.towers import SequenceEncoder, build_towers
from schema.spec import FeatureSpec, SpecError

TABLE = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]], np.float32)  # row 0 = unknown


def _encoder(blocks=1, seed=5):
    encoder = SequenceEncoder(maxlen=4, units=4, heads=2, blocks=blocks, dropout=0.0, seed=seed)
    ids = tf.constant([[1, 2, 0, 0]], tf.int64)
    encoder(tf.gather(TABLE, ids), ids)  # builds the weights
    rng = np.random.default_rng(seed)
    for v in encoder.weights:  # random values everywhere (biases and norms too): nothing left at 0 or 1
        v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    return encoder


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _numpy_encoder(encoder, ids: np.ndarray) -> np.ndarray:
    """The encoder's forward pass written out: projection + positions, per block masked multi-head
    attention (softmax over the present keys only), residual + layer norm, feed-forward, residual +
    layer norm; the output row is the first present position's."""
    w = {v.name.split("/", 1)[1].rsplit(":", 1)[0]: v.numpy() for v in encoder.weights}
    emb = TABLE[ids]
    present = ids != 0
    x = emb @ w["project/kernel"] + w["project/bias"] + w["positions"]
    for b in range(encoder.blocks):
        a = f"attention_{b}"
        q = np.einsum("bld,dhk->blhk", x, w[f"{a}/query/kernel"]) + w[f"{a}/query/bias"]
        k = np.einsum("bld,dhk->blhk", x, w[f"{a}/key/kernel"]) + w[f"{a}/key/bias"]
        v = np.einsum("bld,dhk->blhk", x, w[f"{a}/value/kernel"]) + w[f"{a}/value/bias"]
        scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
        scores = np.where(present[:, None, None, :], scores, -np.inf)
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn = attn / attn.sum(-1, keepdims=True)
        mixed = np.einsum("bhqs,bshk->bqhk", attn, v)
        out = np.einsum("bqhk,hkd->bqd", mixed, w[f"{a}/attention_output/kernel"]) + w[f"{a}/attention_output/bias"]
        x = _layer_norm(x + out, w[f"norm_{b}_attention/gamma"], w[f"norm_{b}_attention/beta"])
        hidden = np.maximum(x @ w[f"feed_forward_{b}_in/kernel"] + w[f"feed_forward_{b}_in/bias"], 0)
        ff = hidden @ w[f"feed_forward_{b}_out/kernel"] + w[f"feed_forward_{b}_out/bias"]
        x = _layer_norm(x + ff, w[f"norm_{b}_feed_forward/gamma"], w[f"norm_{b}_feed_forward/beta"])
    first = present.argmax(axis=1)
    return x[np.arange(len(ids)), first] * present.any(axis=1)[:, None]


def _encode(encoder, ids):
    ids = tf.constant(ids, tf.int64)
    return encoder(tf.gather(TABLE, ids), ids).numpy()


@pytest.mark.parametrize("blocks", [1, 2])
def test_the_encoder_equals_its_forward_pass_written_in_numpy(blocks):
    encoder = _encoder(blocks)
    ids = np.array([[1, 2, 3, 0], [3, 0, 1, 0], [0, 4, 2, 1], [4, 4, 4, 4]], np.int64)
    np.testing.assert_allclose(_encode(encoder, ids), _numpy_encoder(encoder, ids), rtol=2e-4, atol=2e-5)


def test_padding_and_unknown_ids_are_masked():
    """Whatever vector sits at a position whose id is 0 (padding, or an id the table does not know),
    the output is the same: such a position is never attended to nor read out."""
    encoder = _encoder()
    ids = tf.constant([[0, 2, 0, 3]], tf.int64)
    emb = tf.gather(TABLE, ids).numpy()
    noisy = emb.copy()
    noisy[0, [0, 2]] = np.random.default_rng(0).normal(0, 5, (2, 3))
    np.testing.assert_allclose(encoder(tf.constant(emb), ids).numpy(), encoder(tf.constant(noisy), ids).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_order_matters_and_an_empty_history_is_zeros():
    encoder = _encoder()
    forward, backward, swapped, empty = _encode(encoder, [[1, 2, 3, 0], [3, 2, 1, 0], [1, 3, 2, 0], [0, 0, 0, 0]])
    # A reversed history is another user; so is one with the same latest item and the older two swapped
    # (only the position embeddings tell them apart). float32 noise is ~1e-7.
    assert np.abs(forward - backward).max() > 1e-3
    assert np.abs(forward - swapped).max() > 1e-4
    np.testing.assert_array_equal(empty, np.zeros(4, np.float32))


def _attention_spec(spec, **keys):
    d = spec.to_dict()
    d["features"]["client_embed"].update({"reduce": "attention", "embed_dim": 8, "heads": 2, "blocks": 2,
                                          "dropout": 0.1, **keys})
    return FeatureSpec.from_dict(d)


@pytest.mark.parametrize("keys, message", [
    ({"heads": 3}, "embed_dim 8 must be a multiple of heads 3"),
    ({"blocks": 0}, "reduce: attention needs blocks, a positive integer, got 0"),
    ({"embed_dim": None}, "reduce: attention needs embed_dim"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"reduce": "position"}, "embed_dim of a pretrained feature is the width of reduce: attention"),
])
def test_the_spec_refuses_an_encoder_it_cannot_build(spec, keys, message):
    with pytest.raises(SpecError, match=message):
        _attention_spec(spec, **keys)


def test_the_towers_take_the_same_inputs_and_give_the_same_outputs(spec):
    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], seed=3)
    sizes = {"topic_id": 6, "client_type": 4, "post_id": 8}
    pooled, encoded = build_towers(spec, sizes, TABLE, cfg), build_towers(_attention_spec(spec), sizes, TABLE, cfg)
    for tower in ("user", "item"):
        a, b = getattr(pooled, tower), getattr(encoded, tower)
        assert {k: (v.shape.as_list(), v.dtype) for k, v in a.input.items()} == \
            {k: (v.shape.as_list(), v.dtype) for k, v in b.input.items()}
        assert a.output.shape.as_list() == b.output.shape.as_list()
    names = [v.name for v in encoded.scorer.variables]
    assert len(names) == len(set(names))  # warm start needs unique names
    assert any(n.startswith("encode_client_embed/attention_1/") for n in names)


def test_warm_start_carries_the_encoder_across_vocabularies(spec, tmp_path):
    attention = _attention_spec(spec)

    def towers(topics, seed):
        cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], seed=seed)
        return build_towers(attention, {"topic_id": len(topics) + 2, "client_type": 4, "post_id": 4}, TABLE, cfg)

    old_topics, new_topics = [b"a", b"b", b"c"], [b"c", b"x", b"a", b"y"]
    files = {}
    for name, topics in (("old", old_topics), ("new", new_topics)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "topics.txt").write_bytes(b"\n".join(topics) + b"\n")
        (folder / "types.txt").write_bytes(b"1\n2\n")
        (folder / "posts.txt").write_bytes(b"p1\np2\n")
        files[name] = {"topic_id": str(folder / "topics.txt"), "client_type": str(folder / "types.txt"),
                       "post_id": str(folder / "posts.txt")}
    old, new = towers(old_topics, 1), towers(new_topics, 2)
    rng = np.random.default_rng(7)
    for v in old.scorer.variables:  # "trained": biases and norms off their initial 0 and 1 too
        if v.name.startswith("encode_client_embed/"):
            v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
    warm_start.save(str(tmp_path / "model"), old.scorer, files["old"], 1, span=1)
    old_values = {v.name: v.numpy() for v in old.scorer.variables}
    before = {v.name: v.numpy().copy() for v in new.scorer.variables}
    done = warm_start.load(str(tmp_path / "model" / "Format-Serving"), new.scorer, files["new"], 1)
    assert done["groups"]["topic_id"] == {"kept": 2, "new": 2, "dropped": 1}
    encoder = [n for n in old_values if n.startswith("encode_client_embed/")]
    assert len(encoder) > 10
    after = {v.name: v.numpy() for v in new.scorer.variables}
    for name in encoder:  # every encoder weight as trained, none left at today's initialisation
        np.testing.assert_array_equal(after[name], old_values[name])
        assert not np.array_equal(before[name], old_values[name]), name
