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
