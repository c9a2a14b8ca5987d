"""The DSSM towers against numbers computed with numpy from the same weights."""
import numpy as np
import pytest
import tensorflow as tf

from model.config import TrainerConfig
from model.towers import MaskedPool, PositionPool, TwoTowerTrainer, build_towers

GAMMA = 7.0
TABLE = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]], np.float32)  # row 0 = unknown
VOCAB = {"topic_id": 6, "client_type": 4, "post_id": 8}


@pytest.fixture(scope="module")
def towers(spec):
    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], gamma=GAMMA, seed=3)
    return build_towers(spec, VOCAB, TABLE, cfg)


def _batch(n=3, seed=0):
    rng = np.random.default_rng(seed)
    follow = np.zeros((n, 20), np.int64)
    follow[:, :3] = rng.integers(1, 6, size=(n, 3))
    fav = np.zeros((n, 5), np.int64)
    fav[:, :2] = rng.integers(1, 6, size=(n, 2))
    weights = np.zeros((n, 5), np.float32)
    weights[:, :2] = rng.random((n, 2))
    hist = np.zeros((n, 50), np.int64)
    hist[:, :2] = rng.integers(0, 4, size=(n, 2))
    hist[-1] = 0  # the last user has an empty history
    read_ids = np.zeros((n, 50), np.int64)
    read_ids[:, :2] = rng.integers(1, 8, size=(n, 2))
    read_ids[-1] = 0
    return {"topic_id_xf": rng.integers(1, 6, size=n), "client_type_xf": rng.integers(1, 4, size=n),
            "post_id_xf": rng.integers(1, 8, size=n), "read_post_id_xf": read_ids,
            "follow_topic_id_xf": follow, "all_topic_fav_7_xf": fav, "all_topic_fav_7_weight_xf": weights,
            "item_embed_xf": rng.integers(0, 4, size=n), "client_embed_xf": hist}


def _split(batch, model):
    """A tower's inputs from the transformed batch, the content vectors looked up in TABLE by hand."""
    content = {"item_embed": TABLE[batch["item_embed_xf"]], "client_embed": TABLE[batch["client_embed_xf"]]}
    return {k: tf.constant(content[k] if k in content else batch[k]) for k in model.input}


def test_masked_mean_and_weighted_sum_ignore_padding():
    emb = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    ids = np.array([[5, 2, 0, 0], [0, 0, 0, 0]])
    w = np.array([[0.5, 2.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    mean = MaskedPool("mean")(tf.constant(emb), tf.constant(ids)).numpy()
    np.testing.assert_allclose(mean[0], emb[0, :2].mean(axis=0))
    np.testing.assert_allclose(mean[1], [0, 0, 0])  # empty list: zeros, not NaN
    wsum = MaskedPool("weighted")(tf.constant(emb), tf.constant(ids), tf.constant(w)).numpy()
    np.testing.assert_allclose(wsum[0], 0.5 * emb[0, 0] + 2.0 * emb[0, 1])
    np.testing.assert_allclose(wsum[1], [0, 0, 0])


def test_position_pool_weights_the_present_positions_by_softmax_of_their_logits():
    emb = np.arange(36, dtype=np.float32).reshape(3, 4, 3)
    ids = np.array([[5, 0, 2, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    pool = PositionPool(4)
    start = pool(tf.constant(emb), tf.constant(ids)).numpy()
    np.testing.assert_allclose(start[0], emb[0, [0, 2]].mean(axis=0), rtol=1e-6)  # all logits 0: the mean
    logits = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    pool.position_logits.assign(logits)
    out = pool(tf.constant(emb), tf.constant(ids)).numpy()
    w0 = np.exp(logits[[0, 2]]) / np.exp(logits[[0, 2]]).sum()  # only positions 0 and 2 hold an id
    np.testing.assert_allclose(out[0], w0 @ emb[0, [0, 2]], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0, 0])  # empty list: zeros, not NaN
    w2 = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(out[2], w2 @ emb[2], rtol=1e-6)
    assert [v.name for v in pool.trainable_variables] == ["position_pool/position_logits:0"]


def test_score_is_gamma_times_dot_of_normalised_towers(towers):
    batch = _batch()
    user = towers.user(_split(batch, towers.user)).numpy()
    item = towers.item(_split(batch, towers.item)).numpy()
    np.testing.assert_allclose(np.linalg.norm(user, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(item, axis=1), 1.0, rtol=1e-5)
    logits = towers.scorer({k: tf.constant(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(logits, GAMMA * (user * item).sum(axis=1), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(user))  # the empty-history user too


def test_batch_scores_equal_single_pairs(towers):
    batch = _batch(4, seed=1)
    together = towers.scorer({k: tf.constant(v) for k, v in batch.items()}).numpy()
    alone = [towers.scorer({k: tf.constant(v[i:i + 1]) for k, v in batch.items()}).numpy()[0]
             for i in range(4)]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_pretrained_table_is_frozen_and_shared(towers):
    tables = [w for w in towers.scorer.weights if "pretrained_items" in w.name]
    assert len(tables) == 1
    np.testing.assert_array_equal(tables[0].numpy(), TABLE)
    assert all("pretrained_items" not in w.name for w in towers.scorer.trainable_weights)
    topic_tables = [w for w in towers.scorer.trainable_weights if "embed_topic_id" in w.name]
    assert len(topic_tables) == 1  # one table for topic_id, follow_topic_id and all_topic_fav_7


def test_one_training_step_leaves_the_pretrained_table_unchanged(spec):
    cfg = TrainerConfig(user_units=[4], item_units=[4], seed=1, uniform_negatives=0)
    t = build_towers(spec, VOCAB, TABLE, cfg)
    trainer = TwoTowerTrainer(t, spec, cfg)
    trainer.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    before = {w.name: w.numpy().copy() for w in t.scorer.trainable_weights}
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    batch["post_id_item_index"] = tf.constant([1, 2, 3])
    trainer.train_on_batch(batch, tf.constant([1, 0, 1]))
    np.testing.assert_array_equal([w for w in t.scorer.weights if "pretrained" in w.name][0].numpy(), TABLE)
    assert any(not np.array_equal(before[w.name], w.numpy()) for w in t.scorer.trainable_weights)


@pytest.mark.parametrize("loss", ["pointwise", "inbatch_softmax"])
def test_sample_weights_from_the_spec_weight_the_loss(spec, loss):
    """A row of weight 0 counts for nothing; the others by their weight (numpy reference)."""
    import dataclasses

    weighted = dataclasses.replace(spec, weight="w")  # the trainer only reads the weight's name
    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], gamma=GAMMA, seed=3, loss=loss, pos_weight=2.0,
                        logq_correction=False, uniform_negatives=0)
    trainer = TwoTowerTrainer(build_towers(spec, VOCAB, TABLE, cfg), weighted, cfg)
    batch = {k: tf.constant(v) for k, v in _batch(n=4, seed=5).items()}
    batch["post_id_item_index"] = tf.constant([1, 2, 3, 4])
    labels = np.array([1, 0, 1, 1])
    w = np.array([2.0, 0.5, 0.0, 1.0], np.float32)
    loss_value, _, _ = trainer._loss({**batch, "w": tf.constant(w)}, tf.constant(labels), training=False)

    user, item = (t.numpy().astype(np.float64) for t in trainer(batch, training=False))
    if loss == "pointwise":
        z = GAMMA * (user * item).sum(axis=1)
        p = 1 / (1 + np.exp(-z))
        per_row = -(2.0 * labels * np.log(p) + (1 - labels) * np.log(1 - p))
        expected = (per_row * w).sum() / w.sum()
    else:  # clicked rows 0, 2, 3 are the candidates; row 2 has weight 0
        logits = user @ item.T / cfg.temperature
        rows = [0, 2, 3]
        per_row = {r: -(logits[r, r] - np.log(np.exp(logits[r, rows]).sum())) for r in rows}
        expected = sum(per_row[r] * w[r] for r in rows) / sum(w[r] for r in rows)
    assert float(loss_value) == pytest.approx(expected, rel=1e-5)

    # Dropping the zero-weight row changes nothing for the pointwise loss.
    if loss == "pointwise":
        keep = [0, 1, 3]
        fewer = {k: tf.gather(v, keep) for k, v in batch.items()}
        fewer_loss, _, _ = trainer._loss({**fewer, "w": tf.constant(w[keep])}, tf.constant(labels[keep]),
                                         training=False)
        assert float(fewer_loss) == pytest.approx(float(loss_value), rel=1e-6)


def test_uniform_negatives_score_catalog_items_in_training_only(spec):
    """A catalog of one item: every draw is that item, so the loss is known by hand. It is a negative
    for every clicked row except the row that clicked it; the eval loss has no draws."""
    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], gamma=GAMMA, seed=3, loss="inbatch_softmax",
                        logq_correction=False, uniform_negatives=2, id_dropout=0.0)  # the draws alone
    towers = build_towers(spec, VOCAB, TABLE, cfg)
    catalog = {"item_embed_xf": np.array([2]), "topic_id_xf": np.array([4]), "post_id_xf": np.array([5]),
               "post_id_item_index": np.array([11])}
    with pytest.raises(ValueError, match="needs the catalog"):
        TwoTowerTrainer(towers, spec, cfg)
    trainer = TwoTowerTrainer(towers, spec, cfg, catalog=catalog)
    trainer.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    batch = {k: tf.constant(v) for k, v in _batch(n=4, seed=5).items()}
    batch["post_id_item_index"] = tf.constant([11, 12, 13, 14])  # row 0 clicked the catalog's item
    labels = np.array([1, 0, 1, 1])
    trained, _, _ = trainer._loss(batch, tf.constant(labels), training=True)
    evaluated, _, _ = trainer._loss(batch, tf.constant(labels), training=False)

    user, item = (t.numpy().astype(np.float64) for t in trainer(batch, training=False))
    drawn = towers.item({"item_embed": tf.constant(TABLE[[2]]), "topic_id_xf": tf.constant([4]),
                         "post_id_xf": tf.constant([5])}).numpy()[0]
    logits = user @ item.T / cfg.temperature
    rows = [0, 2, 3]
    plain, with_draws = [], []
    for r in rows:
        z = list(logits[r, rows])
        plain.append(-(logits[r, r] - np.log(np.exp(z).sum())))
        if r != 0:
            z += [float(user[r] @ drawn) / cfg.temperature] * 2
        with_draws.append(-(logits[r, r] - np.log(np.exp(z).sum())))
    assert float(evaluated) == pytest.approx(np.mean(plain), rel=1e-5)
    assert float(trained) == pytest.approx(np.mean(with_draws), rel=1e-5)
    assert float(trained) > float(evaluated)


def test_id_dropout_hides_the_same_item_ids_everywhere_in_a_step(spec):
    """Cold start: in one training step an item id is hidden (the OOV row, as an id unknown to the model
    at serving time) in the clicked items and in every history alike, padding never; about id_dropout
    of the ids are hidden; another step hides others; without id_dropout nothing changes."""
    cfg = TrainerConfig(user_units=[8, 4], item_units=[8, 4], id_dropout=0.3, uniform_negatives=0)
    sizes = {**VOCAB, "post_id": 1002}  # padding, 1,000 ids, the OOV row
    towers = build_towers(spec, sizes, TABLE, cfg)
    trainer = TwoTowerTrainer(towers, spec, cfg)
    trainer.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    oov = sizes["post_id"] - 1
    rng = np.random.default_rng(0)
    n = 400
    batch = _batch(n, seed=2)
    batch["post_id_xf"] = rng.integers(1, oov, size=n)
    batch["read_post_id_xf"] = np.where(np.arange(50) < 10, rng.integers(1, oov, size=(n, 50)), 0)
    shown = trainer._hide_ids({k: tf.constant(v) for k, v in batch.items()})
    for name in ("post_id_xf", "read_post_id_xf"):
        before, after = batch[name].reshape(-1), shown[name].numpy().reshape(-1)
        assert set(after[before == 0].tolist()) <= {0}  # padding stays padding
        assert set(np.unique(after[after != before]).tolist()) <= {oov}
    hidden = set(batch["post_id_xf"][shown["post_id_xf"].numpy() == oov].tolist())
    read, read_after = batch["read_post_id_xf"], shown["read_post_id_xf"].numpy()
    hidden_in_history = set(read[(read_after == oov) & (read != 0)].tolist())
    kept_in_history = set(read[(read_after != oov) & (read != 0)].tolist())
    assert hidden_in_history and not hidden_in_history & kept_in_history  # one decision per id
    assert hidden & set(read.reshape(-1).tolist()) <= hidden_in_history
    share = len(hidden_in_history) / len(hidden_in_history | kept_in_history)
    assert 0.2 < share < 0.4
    trainer.optimizer.iterations.assign(1)
    again = trainer._hide_ids({k: tf.constant(v) for k, v in batch.items()})
    assert not np.array_equal(again["read_post_id_xf"].numpy(), read_after)
    plain = TwoTowerTrainer(towers, spec, TrainerConfig(user_units=[8, 4], item_units=[8, 4], uniform_negatives=0,
                                                        id_dropout=0.0))
    unchanged = plain._hide_ids({k: tf.constant(v) for k, v in batch.items()})
    np.testing.assert_array_equal(unchanged["read_post_id_xf"].numpy(), read)
