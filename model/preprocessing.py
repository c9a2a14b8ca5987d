"""tf.Transform preprocessing_fn, derived from the feature spec (loaded by TFX's Transform).

Outputs (transformed_name(...) = "<name>_xf"):
  sparse feature      int64 []        vocabulary index
  varlen feature      int64 [maxlen]  vocabulary indices, padded with 0
  weight feature      float [maxlen]  weights aligned with the ids, padded with 0
  pretrained feature  int64 [] or [maxlen]  rows of the pretrained table (0 = unknown id / padding)
  label               int64 []        passed through under its own name
  <item_id>_item_index int64 []       index of the item in vocab_item_id (1..V, OOV V+1): identifies
                                      items for in-batch losses; item_positive_counts holds the clicks
                                      per item in the training split (logQ correction)
  oov_count_<group>   int64 []        out-of-vocabulary ids in the row, over the group's features
                                      (not a model input: StatisticsGen over the transformed splits
                                      sums it, so that run_summary.json reports OOV counts per split)
Index layout of every vocabulary: 0 = padding, 1..V = the vocabulary (most frequent first),
V+1..V+num_oov_buckets = out-of-vocabulary values. One vocabulary per share_embed group, computed
over the union of its features' values in the training split (optionally only the vocab_top_k most
frequent, or those seen at least vocab_min_count times) and applied to each feature.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from schema.spec import FeatureSpec, transformed_name, vocab_name

OOV_COUNT_PREFIX = "oov_count_"
ITEM_VOCAB = "vocab_item_id"
ITEM_POSITIVE_COUNTS = "item_positive_counts"


def oov_count_name(group: str) -> str:
    return f"{OOV_COUNT_PREFIX}{group}"


def vocab_size_with_reserved(tft_output, group: str, num_oov_buckets: int) -> int:
    """Rows the embedding table of a group needs: padding + vocabulary + OOV buckets."""
    return tft_output.vocabulary_size_by_name(vocab_name(group)) + 1 + num_oov_buckets


def _values(x):
    return x.values if isinstance(x, tf.SparseTensor) else x


def _as_strings(x):
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, _as_strings(x.values), x.dense_shape)
    return x if x.dtype == tf.string else tf.strings.as_string(x)


def _shift(x, delta):
    """Adds delta to the values of a dense or sparse tensor (makes room for the padding index)."""
    if isinstance(x, tf.SparseTensor):
        return tf.SparseTensor(x.indices, x.values + delta, x.dense_shape)
    return x + delta


def _count_per_row(x, value) -> tf.Tensor:
    """int64 [batch]: how many entries of each row equal value (dense [batch] or sparse rows)."""
    if isinstance(x, tf.SparseTensor):
        hits = tf.SparseTensor(x.indices, tf.cast(tf.equal(x.values, value), tf.int64), x.dense_shape)
        return tf.reshape(tf.sparse.reduce_sum(hits, axis=1, keepdims=True), [-1])
    return tf.cast(tf.equal(x, value), tf.int64)


def pad_to(sp: tf.SparseTensor, maxlen: int) -> tf.Tensor:
    """[batch, maxlen] dense tensor from a ragged-rows SparseTensor: truncated, padded with zeros."""
    batch = sp.dense_shape[0]
    sp = tf.sparse.slice(sp, [0, 0], [batch, maxlen])
    sp = tf.sparse.reset_shape(sp, [batch, maxlen])
    return tf.reshape(tf.sparse.to_dense(sp), [-1, maxlen])


def preprocessing_fn(inputs, custom_config):
    spec = FeatureSpec.from_json(custom_config["feature_spec"])
    num_oov = int(custom_config.get("num_oov_buckets", 1))
    outputs = {spec.label: inputs[spec.label]}
    if spec.weight:  # the sample weight, passed through like the label
        outputs[spec.weight] = inputs[spec.weight]

    items = inputs[spec.item_id]
    outputs[spec.item_index] = tft.compute_and_apply_vocabulary(
        items, vocab_filename=ITEM_VOCAB, num_oov_buckets=1) + 1
    clicked = tf.boolean_mask(items, tf.equal(inputs[spec.label], 1))
    tft.vocabulary(clicked, vocab_filename=ITEM_POSITIVE_COUNTS, store_frequency=True)

    for group, feats in spec.vocab_groups().items():
        union = tf.concat([_values(_as_strings(inputs[f.column])) for f in feats], axis=0)
        owner = feats[0]
        vocab = tft.vocabulary(union, vocab_filename=vocab_name(group), top_k=owner.vocab_top_k,
                               frequency_threshold=owner.vocab_min_count)
        oov = tf.zeros_like(_values(inputs[spec.item_id]), dtype=tf.int64)
        for f in feats:
            x = _as_strings(inputs[f.column])
            ids = tft.apply_vocabulary(x, vocab, num_oov_buckets=num_oov)
            oov += _count_per_row(tft.apply_vocabulary(x, vocab, default_value=-1), -1)
            ids = _shift(ids, 1)  # index 0 is padding
            if f.kind == "varlen":
                outputs[transformed_name(f.name)] = pad_to(ids, f.maxlen)
                if f.weight_name:
                    outputs[transformed_name(f.weight_name)] = pad_to(inputs[f.weight_name], f.maxlen)
            else:
                outputs[transformed_name(f.name)] = ids
        outputs[oov_count_name(group)] = oov

    pretrained = [f for f in spec.features if f.kind == "pretrained"]
    if pretrained:
        ids_path = custom_config["item_ids_path"]
        # Created outside the traced function and tracked, so that the id file is copied into the
        # transform graph's assets and the table is initialized once, not on every batch.
        table = tft.make_and_track_object(lambda: tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(ids_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            default_value=-1), name="pretrained_item_rows")
        for f in pretrained:
            x = inputs[f.column]
            if isinstance(x, tf.SparseTensor):
                rows = tf.SparseTensor(x.indices, table.lookup(x.values) + 1, x.dense_shape)
                outputs[transformed_name(f.name)] = pad_to(rows, f.maxlen)
            else:
                outputs[transformed_name(f.name)] = table.lookup(x) + 1  # unknown id -> row 0
    return outputs
