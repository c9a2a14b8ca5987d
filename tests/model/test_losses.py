"""Each loss on a tiny batch against numpy, written out term by term."""
import numpy as np
import pytest
import tensorflow as tf

from model.losses import UniformNegatives, pair_logits, pointwise_loss, softmax_loss
from model.towers import item_log_q

rng = np.random.default_rng(0)
U = rng.normal(size=(4, 3)).astype(np.float32)
V = rng.normal(size=(4, 3)).astype(np.float32)
LABELS = np.array([1, 1, 0, 1])
ITEMS = np.array([7, 8, 9, 7])  # rows 0 and 3 clicked the same item
LOG_Q = np.log(np.array([0.5, 0.2, 0.1, 0.5], np.float32))
T = 0.5


def _log_softmax_at(logits, target):
    m = logits.max()
    return logits[target] - (m + np.log(np.exp(logits - m).sum()))


def test_pair_logits_are_per_row():
    got = pair_logits(tf.constant(U), tf.constant(V), 2.0).numpy()
    want = [2.0 * float(U[i] @ V[i]) for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.shape == (4,)  # one score per pair, not a batch sum


def test_pointwise_is_weighted_bce():
    z = 3.0 * (U * V).sum(axis=1)
    p = 1 / (1 + np.exp(-z))
    want = np.mean(-(1.2 * LABELS * np.log(p) + (1 - LABELS) * np.log(1 - p)))
    got = pointwise_loss(tf.constant(U), tf.constant(V), tf.constant(LABELS), 3.0, 1.2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _softmax_by_hand(use_log_q: bool, impression_negatives: bool) -> float:
    losses = []
    for i in range(4):
        if not LABELS[i]:
            continue
        logits = []
        for j in range(4):
            if j != i and ITEMS[j] == ITEMS[i]:
                continue                               # accidental hit: masked
            if not LABELS[j] and not impression_negatives:
                continue                               # not a candidate
            z = float(U[i] @ V[j]) / T
            if use_log_q and LABELS[j]:
                z -= float(LOG_Q[j])                   # only sampled (clicked) candidates
            logits.append((j, z))
        target = [k for k, (j, _) in enumerate(logits) if j == i][0]
        losses.append(-_log_softmax_at(np.array([z for _, z in logits]), target))
    return float(np.mean(losses))


@pytest.mark.parametrize("use_log_q", [False, True])
@pytest.mark.parametrize("impression_negatives", [False, True])
def test_softmax_losses_match_hand_computation(use_log_q, impression_negatives):
    got = softmax_loss(tf.constant(U), tf.constant(V), tf.constant(LABELS), tf.constant(ITEMS), T,
                       tf.constant(LOG_Q) if use_log_q else None, impression_negatives=impression_negatives).numpy()
    np.testing.assert_allclose(got, _softmax_by_hand(use_log_q, impression_negatives), rtol=1e-5)


W = rng.normal(size=(3, 3)).astype(np.float32)       # three items drawn uniformly from a catalog of 10
W_ITEMS = np.array([8, 5, 7])                        # 8 is row 1's item, 7 rows 0 and 3's
W_LOG_Q = np.log(np.array([0.2, 0.05, 0.5], np.float32))


@pytest.mark.parametrize("use_log_q", [False, True])
@pytest.mark.parametrize("impression_negatives", [False, True])
def test_uniform_negatives_are_extra_candidates_of_every_clicked_row(use_log_q, impression_negatives):
    share = 3 / (10 * 3)  # M draws / (catalog size x clicked rows): each draw's expected share per row
    losses = []
    for i in np.flatnonzero(LABELS):
        logits, target = [], None
        for j in range(4):
            if (j != i and ITEMS[j] == ITEMS[i]) or (not LABELS[j] and not impression_negatives):
                continue
            z = float(U[i] @ V[j]) / T
            if use_log_q and LABELS[j]:
                z -= np.log(np.exp(LOG_Q[j]) + share)
            target = len(logits) if j == i else target
            logits.append(z)
        for w in range(3):
            if W_ITEMS[w] == ITEMS[i]:
                continue                               # a draw of the row's own item is no negative
            logits.append(float(U[i] @ W[w]) / T - (np.log(np.exp(W_LOG_Q[w]) + share) if use_log_q else 0.0))
        losses.append(-_log_softmax_at(np.array(logits), target))
    uniform = UniformNegatives(tf.constant(W), tf.constant(W_ITEMS), tf.constant(W_LOG_Q) if use_log_q else None, 10)
    got = softmax_loss(tf.constant(U), tf.constant(V), tf.constant(LABELS), tf.constant(ITEMS), T,
                       tf.constant(LOG_Q) if use_log_q else None, impression_negatives=impression_negatives,
                       uniform=uniform).numpy()
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)


def test_softmax_without_clicks_is_zero_not_nan():
    got = softmax_loss(tf.constant(U), tf.constant(V), tf.constant([0, 0, 0, 0]), tf.constant(ITEMS), T).numpy()
    assert got == 0.0


def test_item_log_q_from_click_counts():
    log_q = item_log_q(np.array([6, 2, 0]))  # clicks of the vocabulary's a, b, c
    # index 0 (padding) and 4 (OOV) get one click; c was never clicked: one click. Total over a, b, c = 9.
    np.testing.assert_allclose(np.exp(log_q), [1 / 9, 6 / 9, 2 / 9, 1 / 9, 1 / 9], rtol=1e-6)


def test_clicks_are_read_in_vocabulary_order(tmp_path):
    from model.trainer import clicks_in_vocab_order

    (tmp_path / "vocab").write_text("p9\np1 x\np3\n")  # an id may hold a space
    (tmp_path / "counts").write_text("6 p1 x\n2.0 p9\n")  # tf.Transform's `count item` lines
    np.testing.assert_array_equal(clicks_in_vocab_order(str(tmp_path / "vocab"), str(tmp_path / "counts")),
                                  [2.0, 6.0, 0.0])
    (tmp_path / "none").write_text("")
    np.testing.assert_array_equal(clicks_in_vocab_order(str(tmp_path / "vocab"), str(tmp_path / "none")), [0, 0, 0])
