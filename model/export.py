"""The Trainer's export: the SavedModel's serving signatures over serialized tf.Examples and over raw
tensors (ServingModule), the serving contract the model server checks requests against, and
export() of the two towers and their pair score.

  serving_default      -> {"score": sigmoid(gamma * dot(user, item))}   float [None]: a probability
                          only under the pointwise loss; a ranking score under the softmax losses
  user_embedding       -> {"embedding": user tower output}               float [None, d]
  item_embedding       -> {"embedding": item tower output}               float [None, d]
  user_embedding_raw, item_embedding_raw: the same towers on named dense tensors (no parsing).
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from common import signature_names
from model.losses import pair_logits
from model.towers import model_input_names
from schema.spec import FeatureSpec
from serving.request_cost import CONTRACT_FILE

EXAMPLES_INPUT = "examples"


def tower_raw_features(spec: FeatureSpec, tower: str) -> list[str]:
    """The tf.Example features a tower reads (its features' columns and weight features)."""
    names = []
    for f in spec.tower_features(tower):
        names += [f.column] + ([f.weight_name] if f.weight_name else [])
    return list(dict.fromkeys(names))


class ServingModule(tf.Module):
    """The exported functions: the Transform layer and the towers behind tf.Example and raw inputs.

    The content vectors come in the request (by value), never from a table frozen at training time:
    a tf.Example carries each pretrained feature as a float list under the feature's name
    (item_embed: the post's d values; client_embed: d values per id of its source list, in the
    list's order, all zero for a post without a vector), so any post with a vector can be embedded
    and every read post shapes the user. The graph refuses a vector whose length does not fit."""

    def __init__(self, towers, tft_output, spec: FeatureSpec):
        super().__init__()
        # The Keras models are not tracked, their variables are: tracking a Keras model makes
        # tf.saved_model.save trace every layer's call again for Keras' own metadata (most of the
        # export's time), which nothing here loads; the signatures are all the SavedModel serves.
        # The frozen content table of training is not among them: it is not exported.
        self._towers = towers  # a plain dataclass: not tracked
        seen, variables = set(), []
        for v in towers.user.variables + towers.item.variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
        self.tower_variables = variables
        self.tft_layer = tft_output.transform_features_layer()  # tracked: its assets are saved too
        self._spec = spec
        self._dim = towers.content.dim if towers.content is not None else 0
        self._gamma = next(layer.gamma for layer in towers.scorer.layers if layer.name == "score_logit")
        self._content = {f.name: f for f in spec.features if f.kind == "pretrained"}
        self._parse_spec = {**spec.raw_feature_spec(include_label=False, serving=True),
                            **{name: tf.io.VarLenFeature(tf.float32) for name in self._content}}
        self._inputs = {t: model_input_names(spec, t) for t in ("user", "item")}
        examples = tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)
        # autograph=False: no control flow on tensors here; converting Keras' code made export slow
        self.user_embedding = tf.function(self._user_from_examples, input_signature=[examples], autograph=False)
        self.item_embedding = tf.function(self._item_from_examples, input_signature=[examples], autograph=False)
        self.score = tf.function(self._score_from_examples, input_signature=[examples], autograph=False)
        self.user_embedding_raw = self._raw_function("user")
        self.item_embedding_raw = self._raw_function("item")

    def _transform(self, raw):
        return self.tft_layer(self._check_weights(raw))

    def _check_weights(self, raw):
        """A request's weights follow the log parser's rule (finite, >= 0), in the graph: any server,
        TF Serving's included, answers INVALID_ARGUMENT naming the feature instead of a vector."""
        checked = dict(raw)
        for column in self._spec.raw_columns.values():
            name = column.weight_name
            if not name or name not in raw:
                continue
            values = raw[name].values if isinstance(raw[name], tf.SparseTensor) else raw[name]
            checks = [tf.debugging.assert_all_finite(values, f"{name}: a weight is not a finite number"),
                      tf.debugging.assert_greater_equal(values, tf.constant(0, values.dtype),
                                                        message=f"{name}: a weight is below 0", summarize=3)]
            with tf.control_dependencies(checks):
                checked[name] = tf.identity(raw[name]) if not isinstance(raw[name], tf.SparseTensor) else \
                    tf.SparseTensor(raw[name].indices, tf.identity(values), raw[name].dense_shape)
        return checked

    def _content_from_example(self, name: str, raw) -> tf.Tensor:
        """A pretrained feature's vectors from a parsed tf.Example's float list: [b, d] for the item's
        own, [b, maxlen, d] for a list (d values per id of the source list; truncated as the ids are)."""
        f, d = self._content[name], self._dim
        values = raw[name]
        batch = values.dense_shape[0]
        per_row = tf.math.bincount(tf.cast(values.indices[:, 0], tf.int32), minlength=tf.cast(batch, tf.int32),
                                   dtype=tf.int64)
        finite = tf.debugging.assert_all_finite(values.values, f"{name}: a value is not a finite number")
        if not f.reduce:
            fits = tf.debugging.assert_equal(
                tf.reduce_all(tf.logical_or(tf.equal(per_row, 0), tf.equal(per_row, d))), True,
                message=f"{name}: {d} values per post are needed (or none)")
            with tf.control_dependencies([finite, fits]):
                return tf.sparse.to_dense(tf.SparseTensor(values.indices, tf.identity(values.values), [batch, d]))
        ids = raw[f.source]
        ids_per_row = tf.math.bincount(tf.cast(ids.indices[:, 0], tf.int32), minlength=tf.cast(batch, tf.int32),
                                       dtype=tf.int64)
        fits = tf.debugging.assert_equal(
            per_row, ids_per_row * d,
            message=f"{name}: {d} values per post of {f.source} are needed (zeros for a post without a vector)",
            summarize=3)
        position = values.indices[:, 1] // d
        keep = position < f.maxlen
        indices = tf.boolean_mask(tf.stack([values.indices[:, 0], position, values.indices[:, 1] % d], 1), keep)
        with tf.control_dependencies([finite, fits]):
            kept = tf.boolean_mask(tf.identity(values.values), keep)
        return tf.sparse.to_dense(tf.SparseTensor(indices, kept, [batch, f.maxlen, d]))

    def _tower(self, tower, t, content: dict):
        model = self._towers.user if tower == "user" else self._towers.item
        inputs = {k: content[k] if k in self._content else t[k] for k in self._inputs[tower]}
        return {"embedding": model(inputs, training=False)}

    def _from_examples(self, tower: str, examples):
        raw = tf.io.parse_example(examples, self._parse_spec)
        content = {name: self._content_from_example(name, raw) for name in self._content
                   if name in self._inputs[tower]}
        return self._tower(tower, self._transform({k: v for k, v in raw.items() if k not in self._content}), content)

    def _user_from_examples(self, examples):
        return self._from_examples("user", examples)

    def _item_from_examples(self, examples):
        return self._from_examples("item", examples)

    def _score_from_examples(self, examples):
        user = self._from_examples("user", examples)["embedding"]
        item = self._from_examples("item", examples)["embedding"]
        return {"score": tf.sigmoid(pair_logits(user, item, self._gamma))}

    def _raw_function(self, tower: str):
        """Named dense tensors in: scalars [None]; lists [None, None] padded with "" (weights with 0);
        content vectors [None, d] (the item's) or [None, None, d] (one per entry of the source list,
        rows at padded entries ignored)."""
        names = tower_raw_features(self._spec, tower)
        specs = {}
        for name, feature in self._parse_spec.items():
            if name not in names or name in self._content:
                continue
            if isinstance(feature, tf.io.VarLenFeature):
                specs[name] = tf.TensorSpec([None, None], feature.dtype, name=name)
            else:
                specs[name] = tf.TensorSpec([None], feature.dtype, name=name)
        content_names = [n for n in self._content if n in self._inputs[tower]]
        for name in content_names:
            shape = [None, None, self._dim] if self._content[name].reduce else [None, self._dim]
            specs[name] = tf.TensorSpec(shape, tf.float32, name=name)
        weight_of = {c.weight_name: c.name for c in self._spec.raw_columns.values() if c.weight_name}

        def fn(**inputs):
            batch = tf.shape(next(iter(inputs.values())))[0]
            raw = {}
            for name, feature in self._parse_spec.items():
                if name in self._content:
                    continue
                if name in inputs and isinstance(feature, tf.io.VarLenFeature):
                    ids = inputs[weight_of.get(name, name)]  # "" in the id list marks padding of both
                    raw[name] = _keep_positions(inputs[name], tf.not_equal(ids, ""))
                elif name in inputs:
                    raw[name] = inputs[name]
                elif isinstance(feature, tf.io.VarLenFeature):
                    raw[name] = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], feature.dtype),
                                                tf.stack([tf.cast(batch, tf.int64), tf.constant(0, tf.int64)]))
                else:
                    raw[name] = tf.fill([batch], tf.constant(feature.default_value, feature.dtype))
            content = {name: self._content_from_dense(name, inputs) for name in content_names}
            return self._tower(tower, self._transform(raw), content)

        return tf.function(fn, input_signature=None, autograph=False).get_concrete_function(**specs)

    def _content_from_dense(self, name: str, inputs: dict) -> tf.Tensor:
        f = self._content[name]
        vectors = inputs[name]
        finite = tf.debugging.assert_all_finite(vectors, f"{name}: a value is not a finite number")
        if not f.reduce:
            with tf.control_dependencies([finite]):
                return tf.identity(vectors)
        ids = inputs[f.source]
        fits = tf.debugging.assert_equal(tf.shape(vectors)[:2], tf.shape(ids),
                                         message=f"{name}: one vector per entry of {f.source} is needed")
        with tf.control_dependencies([finite, fits]):
            vectors = vectors * tf.cast(tf.not_equal(ids, ""), vectors.dtype)[..., None]
        width = tf.shape(vectors)[1]
        vectors = tf.pad(vectors[:, :f.maxlen], [[0, 0], [0, tf.maximum(f.maxlen - width, 0)], [0, 0]])
        return tf.reshape(vectors, [-1, f.maxlen, self._dim])

    def signatures(self, which: str = "all") -> dict:
        names = signature_names
        user = {names.USER: self.user_embedding, names.USER + names.RAW: self.user_embedding_raw}
        item = {names.ITEM: self.item_embedding, names.ITEM + names.RAW: self.item_embedding_raw}
        if which == "user":
            return {signature_names.SCORE: self.user_embedding, **user}
        if which == "item":
            return {signature_names.SCORE: self.item_embedding, **item}
        return {signature_names.SCORE: self.score, **user, **item}


def _keep_positions(dense: tf.Tensor, present: tf.Tensor) -> tf.SparseTensor:
    """SparseTensor of the entries of dense [batch, n] where present is True (ids and weights alike)."""
    indices = tf.where(present)
    return tf.SparseTensor(indices, tf.gather_nd(dense, indices), tf.shape(dense, out_type=tf.int64))


def serving_contract(spec: FeatureSpec, towers, which: str, exported: list[str]) -> dict:
    """What a request costs the exported model and may hold, for the model server: per signature, the
    floats one row takes once its lists are padded (maxlen x embedding width, summed over the tower's
    features) and which input holds serialized tf.Examples; the smallest value of each weight feature
    (the log parser's rule: >= 0). `exported`: the signature names of the SavedModel it goes with."""
    pretrained = towers.content.dim if towers.content is not None else 0

    def floats(tower: str) -> int:
        return sum((f.maxlen or 1) * (pretrained if f.kind == "pretrained" else spec.group_embed_dim(f.group))
                   for f in spec.tower_features(tower))

    names = signature_names
    per = {"user": floats("user"), "item": floats("item")}
    sigs = {}
    for tower in ("user", "item"):
        base = names.USER if tower == "user" else names.ITEM
        sigs[base] = {"floats_per_row": per[tower], "examples_input": EXAMPLES_INPUT}
        sigs[base + names.RAW] = {"floats_per_row": per[tower]}
    score = per["user"] + per["item"] if which == "all" else per[which]
    sigs[names.SCORE] = {"floats_per_row": score, "examples_input": EXAMPLES_INPUT}
    return {"signatures": {k: v for k, v in sigs.items() if k in exported},
            "minimum": {c.weight_name: 0.0 for c in spec.raw_columns.values() if c.weight_name}}


def export(towers, tft_output, spec: FeatureSpec, serving_dir: str) -> None:
    """The full model in serving_dir; the user-only and item-only models beside it (<dir>-user, -item),
    each with its serving contract in assets.extra/."""
    module = ServingModule(towers, tft_output, spec)
    for which, path in (("all", serving_dir), ("user", f"{serving_dir}-user"), ("item", f"{serving_dir}-item")):
        signatures = module.signatures(which)
        tf.saved_model.save(module, path, signatures=signatures)
        tf.io.gfile.makedirs(os.path.dirname(os.path.join(path, CONTRACT_FILE)))
        with tf.io.gfile.GFile(os.path.join(path, CONTRACT_FILE), "w") as f:
            json.dump(serving_contract(spec, towers, which, list(signatures)), f, indent=1, sort_keys=True)
