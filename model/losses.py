"""Training losses of the two-tower model, on the tower outputs of one batch.

  pointwise        weighted binary cross-entropy on the logged act labels, logit = gamma * <u, v>
                   (the original design; pos_weight scales the act=1 rows)
  inbatch_softmax  softmax over the batch's clicked items: each clicked row's item is the target among
                   the items of all clicked rows; logits = <u, v> / temperature, minus log q(item)
                   (logQ correction: popular items are sampled into batches more often), and an item
                   that appears in another row of the batch is masked out for the row (an accidental
                   hit is not a negative)
  mixed            inbatch_softmax plus the items of the batch's act=0 rows (impressions shown and not
                   clicked: "impression negatives"; logged, not sampled, so no logQ) as extra negatives
                   for every clicked row. The name is the config's; it is not "mixed negative sampling"
Both softmax losses take, with trainer.uniform_negatives, that many items drawn uniformly from the
training split's items as extra candidates for every clicked row: that is mixed negative sampling
(Yang et al. 2020), whichever of the two losses it is added to.
Every similarity is reduced per row (over the embedding axis), never over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from model import config

_MASKED = -1e9


def pair_logits(user: tf.Tensor, item: tf.Tensor, gamma: float) -> tf.Tensor:
    """[batch]: gamma * <user_i, item_i>, one value per row."""
    return gamma * tf.reduce_sum(user * item, axis=-1)


def pointwise_loss(user, item, labels, gamma: float, pos_weight: float, sample_weight=None) -> tf.Tensor:
    y = tf.cast(tf.reshape(labels, [-1]), tf.float32)
    per_row = tf.nn.weighted_cross_entropy_with_logits(y, pair_logits(user, item, gamma), pos_weight)
    if sample_weight is None:
        return tf.reduce_mean(per_row)
    w = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_row * w), tf.reduce_sum(w))


@dataclass
class UniformNegatives:
    """Items drawn uniformly from the catalog of `catalog_size` items, extra candidates for every
    clicked row (mixed negative sampling: the tail of the catalog, which batches rarely hold).
    item: [M, d] their tower outputs; item_ids: [M]; log_q: [M] their log q (for the correction)."""
    item: tf.Tensor
    item_ids: tf.Tensor
    log_q: tf.Tensor | None
    catalog_size: int


def softmax_loss(user, item, labels, item_ids, temperature: float, log_q=None, impression_negatives: bool = False,
                 sample_weight=None, uniform: UniformNegatives | None = None) -> tf.Tensor:
    """In-batch softmax over the clicked rows (and, with impression_negatives, the act=0 rows' items, and
    with uniform, items drawn uniformly from the catalog).

    user, item: [B, d]; labels: [B] 0/1; item_ids: [B] ints identifying items (for accidental hits);
    log_q: [B] log sampling probability of each row's item, or None.
    The logQ correction of a sampled candidate is the log of its expected share of the candidates per
    clicked row: q(item) alone in batch, q(item) + M / (catalog_size x clicked rows) with M uniform
    draws (the same for both kinds of candidate, so neither kind is favoured).
    """
    labels = tf.reshape(tf.cast(labels, tf.bool), [-1])
    item_ids = tf.reshape(item_ids, [-1])
    logits = tf.matmul(user, item, transpose_b=True) / temperature            # [B, B]: row i, candidate j
    def corrected(candidate_logits, candidate_log_q):
        candidate_log_q = tf.reshape(tf.cast(candidate_log_q, logits.dtype), [-1])
        if uniform is not None:
            clicked = tf.maximum(tf.reduce_sum(tf.cast(labels, logits.dtype)), 1.0)
            share = tf.cast(tf.shape(uniform.item_ids)[0], logits.dtype) / (uniform.catalog_size * clicked)
            candidate_log_q = tf.math.log(tf.exp(candidate_log_q) + share)
        return candidate_logits - candidate_log_q[None, :]

    if log_q is not None:  # correct only the sampled candidates (the clicked rows' items)
        logits = tf.where(labels[None, :], corrected(logits, log_q), logits)
    candidate = labels if not impression_negatives else tf.ones_like(labels)
    size = tf.shape(labels)[0]
    diagonal = tf.eye(size, dtype=tf.bool)
    same_item = tf.equal(item_ids[:, None], item_ids[None, :])
    keep = (candidate[None, :] & ~(same_item & ~diagonal)) | diagonal
    logits = tf.where(keep, logits, _MASKED)
    if uniform is not None:  # [B, M] more candidates; a draw of the row's own item is not a negative
        drawn = tf.matmul(user, uniform.item, transpose_b=True) / temperature
        if uniform.log_q is not None:
            drawn = corrected(drawn, uniform.log_q)
        own = tf.equal(item_ids[:, None], tf.cast(tf.reshape(uniform.item_ids, [-1]), item_ids.dtype)[None, :])
        logits = tf.concat([logits, tf.where(own, _MASKED, drawn)], axis=1)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(size), logits=logits)
    w = tf.cast(labels, per_row.dtype)
    if sample_weight is not None:
        w *= tf.cast(tf.reshape(sample_weight, [-1]), per_row.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_row * w), tf.reduce_sum(w))


# The registry: trainer.loss -> the batch loss. Each takes the tower outputs [B, d], the act labels,
# the items' vocabulary ids, their log q (or None), the row weights (or None), the TrainerConfig and
# the uniform negatives (or None; the pointwise loss has no candidates and refuses them in the config).
def _pointwise(user, item, labels, item_ids, log_q, weight, cfg, uniform=None):
    return pointwise_loss(user, item, labels, cfg.gamma, cfg.pos_weight, sample_weight=weight)


def _inbatch_softmax(user, item, labels, item_ids, log_q, weight, cfg, uniform=None):
    return softmax_loss(user, item, labels, item_ids, cfg.temperature, log_q, sample_weight=weight, uniform=uniform)


def _mixed(user, item, labels, item_ids, log_q, weight, cfg, uniform=None):
    return softmax_loss(user, item, labels, item_ids, cfg.temperature, log_q, impression_negatives=True,
                        sample_weight=weight, uniform=uniform)


LOSS_FUNCTIONS = {"pointwise": _pointwise, "inbatch_softmax": _inbatch_softmax, "mixed": _mixed}
if tuple(LOSS_FUNCTIONS) != config.LOSSES:  # the config accepts exactly the losses that exist
    raise ImportError(f"model/config.py LOSSES {config.LOSSES} != the registry {tuple(LOSS_FUNCTIONS)}")
