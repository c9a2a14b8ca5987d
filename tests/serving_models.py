"""Tiny SavedModels with known arithmetic, in TF Serving's layout, for the serving tests.

Version v computes y = 0.5 * x + (1 + v), so every response says which version answered it.
"""
from __future__ import annotations

import os
import shutil

import tensorflow as tf


class Tiny(tf.Module):
    def __init__(self, offset: float):
        super().__init__()
        self.offset = tf.Variable(offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def half_plus(self, x):
        return {"y": 0.5 * x + self.offset}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                  tf.TensorSpec([None], tf.int64, name="b")])
    def mixed(self, a, b):
        return {"sum": a + tf.cast(b, tf.float32), "doubled": 2 * b,
                "tag": tf.strings.join([tf.strings.as_string(b), "!"])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
    def echo(self, s):
        return {"length": tf.strings.length(s), "s_bytes": s}


def save_version(base_path: str, version: int) -> str:
    """Writes <base_path>/<version>/ atomically (built aside, then renamed), as a pusher should."""
    module = Tiny(float(1 + version))
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.half_plus, "mixed": module.mixed, "echo": module.echo})
    os.rename(tmp, final)
    return final


class Lists(tf.Module):
    """A model that reads lists, with a serving contract (assets.extra/serving_contract.json) as the
    Trainer writes one: tf.Examples holding `ids` (strings) and `w` (weights, >= 0), or the same
    as raw tensors beside an int64 `kind`. total = the sum of a row's weights (+ kind)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def from_examples(self, examples):
        parsed = tf.io.parse_example(examples, {"ids": tf.io.VarLenFeature(tf.string),
                                                "w": tf.io.VarLenFeature(tf.float32)})
        w = parsed["w"].values  # the weights checked in the graph, as the Trainer's signatures do
        with tf.control_dependencies([tf.debugging.assert_all_finite(w, "w: a weight is not a finite number"),
                                      tf.debugging.assert_greater_equal(w, 0.0, message="w: a weight is below 0")]):
            total = tf.sparse.reduce_sum(parsed["w"], axis=1, output_is_sparse=False)
        return {"total": tf.identity(total)}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="ids"),
                                  tf.TensorSpec([None, None], tf.float32, name="w"),
                                  tf.TensorSpec([None], tf.int64, name="kind")])
    def raw(self, ids, w, kind):
        return {"total": tf.reduce_sum(w, axis=1) + tf.cast(kind, tf.float32),
                "wide": tf.zeros(tf.stack([tf.shape(w)[0], 256]))}


LISTS_CONTRACT = {"signatures": {"serving_default": {"floats_per_row": 1000, "examples_input": "examples"},
                                 "raw": {"floats_per_row": 1000}},
                  "minimum": {"w": 0.0}}


def save_lists_version(base_path: str, version: int) -> str:
    import json

    module = Lists()
    final = os.path.join(base_path, str(version))
    tmp = os.path.join(base_path, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.from_examples, "raw": module.raw})
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "serving_contract.json"), "w") as f:
        json.dump(LISTS_CONTRACT, f)
    os.rename(tmp, final)
    return final
