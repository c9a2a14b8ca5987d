"""The DSSM two-tower model of the original design, built from the feature spec (tf-keras).

- one embedding table per share_embed group (index 0 = padding, never counted);
- varlen features combined by mean over non-padding ids (or a learned position-weighted mean,
  `reduce: position`), weighted ones by weighted sum;
- pretrained content vectors taken by value: the towers' inputs are the item's own vector [d] and the
  vectors of the user's history [maxlen, d] (an all-zero row = no vector: padding or an unknown post),
  combined by mean, sum or learned position-weighted mean (`reduce: position`) over the rows that hold
  a vector (an empty history gives zeros, not 0/0), or self-attention over the history read as a
  sequence (`reduce: attention`: SequenceEncoder). Training looks the vectors up in a frozen table
  (the run's vector file, Transform's rows) in front of the towers (Towers.content); the exported
  signatures take them in the request, so a post published after training is embedded by its content;
- towers of Dense layers (hidden activation, optional batch norm and dropout, output activation),
  L2-normalised outputs, score logit = gamma * dot(user, item) = gamma * cosine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model import config
from model.config import TrainerConfig
from model.losses import LOSS_FUNCTIONS, UniformNegatives, pair_logits
from schema.spec import Feature, FeatureSpec, transformed_name


def model_input_names(spec: FeatureSpec, tower: str) -> list[str]:
    """The tower model's inputs: Transform's outputs for ids and weights, the content vectors by
    the pretrained feature's own name (item_embed [d], client_embed [maxlen, d])."""
    names = []
    for f in spec.tower_features(tower):
        names.append(f.name if f.kind == "pretrained" else transformed_name(f.name))
        if f.weight_name:
            names.append(transformed_name(f.weight_name))
    return names


def transformed_input_names(spec: FeatureSpec, tower: str) -> list[str]:
    """The Transform outputs a tower's inputs are made from (pretrained: rows of the content table)."""
    return [transformed_name(n) if n in {f.name for f in spec.features if f.kind == "pretrained"} else n
            for n in model_input_names(spec, tower)]


def _inputs(spec: FeatureSpec, tower: str, content_dim: int) -> dict[str, tf.keras.Input]:
    inputs = {}
    for f in spec.tower_features(tower):
        shape = (f.maxlen,) if f.is_list else ()
        if f.kind == "pretrained":
            inputs[f.name] = tf.keras.Input(shape=(*shape, content_dim), dtype=tf.float32, name=f.name)
            continue
        name = transformed_name(f.name)
        inputs[name] = tf.keras.Input(shape=shape, dtype=tf.int64, name=name)
        if f.weight_name:
            wname = transformed_name(f.weight_name)
            inputs[wname] = tf.keras.Input(shape=shape, dtype=tf.float32, name=wname)
    return inputs


def has_content(vectors: tf.Tensor) -> tf.Tensor:
    """int64 [...]: 1 where a content vector [..., d] holds a value, 0 for an all-zero row (padding or
    a post without a vector): the presence mask of the pooling layers, as id != 0 is for ids."""
    return tf.cast(tf.reduce_any(tf.not_equal(vectors, 0), axis=-1), tf.int64)


class MaskedPool(tf.keras.layers.Layer):
    """Mean or weighted sum of embeddings [b, L, d] over the positions whose id is not 0."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode  # mean | sum | weighted

    def call(self, emb, ids, weights=None):
        mask = tf.cast(tf.not_equal(ids, 0), emb.dtype)
        if self.mode == "weighted":
            mask = mask * tf.cast(weights, emb.dtype)
        total = tf.reduce_sum(emb * mask[..., None], axis=1)
        if self.mode == "mean":
            return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=1, keepdims=True))
        return total

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class PositionPool(tf.keras.layers.Layer):
    """Weighted mean of embeddings [b, L, d] over the non-padding positions, with a trainable weight
    per list position (softmax over the positions present; all zero at the start = the plain mean).
    Lists come most recent first, so the model can learn how fast interest decays."""

    def __init__(self, maxlen: int, **kwargs):
        super().__init__(**kwargs)
        self.maxlen = int(maxlen)

    def build(self, input_shape=None):
        self.position_logits = self.add_weight(name="position_logits", shape=(self.maxlen,), initializer="zeros")
        super().build(input_shape)

    def call(self, emb, ids):
        present = tf.not_equal(ids, 0)
        logits = tf.where(present, self.position_logits[None, :], -1e9)
        w = tf.nn.softmax(logits, axis=1) * tf.cast(present, emb.dtype)  # an empty list: all zero
        return tf.reduce_sum(emb * w[..., None], axis=1)

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen}


class SequenceEncoder(tf.keras.layers.Layer):
    """Self-attention over a list of item vectors [b, L, d] (most recent first; id 0, padding or an
    unknown id, is masked as a key): the vectors projected to `units`, a learned embedding per list
    position added, then `blocks` Transformer encoder blocks (multi-head attention and a feed-forward
    layer, each with a residual connection, dropout and layer normalisation). The user's vector is the
    encoded most recent known event, which has attended to the whole known history; an empty history
    gives zeros, as the pooling layers do."""

    def __init__(self, maxlen: int, units: int, heads: int, blocks: int, dropout: float = 0.0, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.units, self.heads, self.blocks = int(maxlen), int(units), int(heads), int(blocks)
        self.dropout, self.seed = float(dropout), int(seed)

    def build(self, input_shape=None):
        init = tf.keras.initializers.GlorotUniform
        self.project = tf.keras.layers.Dense(self.units, kernel_initializer=init(self.seed), name="project")
        self.positions = self.add_weight(
            name="positions", shape=(self.maxlen, self.units),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.02, seed=self.seed))
        self.attention, self.feed_forward, self.norms = [], [], []
        for b in range(self.blocks):
            self.attention.append(tf.keras.layers.MultiHeadAttention(
                self.heads, self.units // self.heads, dropout=self.dropout,
                kernel_initializer=init(self.seed + 10 * b + 1), name=f"attention_{b}"))
            self.feed_forward.append((
                tf.keras.layers.Dense(self.units, activation="relu", kernel_initializer=init(self.seed + 10 * b + 2),
                                      name=f"feed_forward_{b}_in"),
                tf.keras.layers.Dense(self.units, kernel_initializer=init(self.seed + 10 * b + 3),
                                      name=f"feed_forward_{b}_out")))
            self.norms.append((tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm_{b}_attention"),
                               tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm_{b}_feed_forward")))
        self.drop = tf.keras.layers.Dropout(self.dropout, seed=self.seed)
        super().build(input_shape)

    def call(self, emb, ids, training=None):
        present = tf.not_equal(ids, 0)                                   # [b, L]
        x = self.project(emb) + self.positions[None, :, :]
        keys = tf.tile(present[:, None, :], [1, tf.shape(ids)[1], 1])  # [b, L (queries), L (keys)]
        for attention, (inner, outer), (norm_a, norm_f) in zip(self.attention, self.feed_forward, self.norms,
                                                              strict=True):
            x = norm_a(x + self.drop(attention(x, x, attention_mask=keys, training=training), training=training))
            x = norm_f(x + self.drop(outer(inner(x)), training=training))
        latest = tf.argmax(tf.cast(present, tf.int32), axis=1)          # the first present position
        out = tf.gather(x, latest, axis=1, batch_dims=1)
        return out * tf.cast(tf.reduce_any(present, axis=1), out.dtype)[:, None]

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "units": self.units, "heads": self.heads,
                "blocks": self.blocks, "dropout": self.dropout, "seed": self.seed}


class FrozenTable(tf.keras.layers.Layer):
    """The pretrained item table: a non-trainable variable, set once with set_table().

    Not a Keras Constant initializer: that would copy the whole matrix into the layer config
    (and the SavedModel's Keras metadata) as a JSON list.
    """

    def __init__(self, rows: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.dim = int(rows), int(dim)

    def build(self, input_shape=None):
        self.table = self.add_weight(name=f"{self.name}_table", shape=(self.rows, self.dim), initializer="zeros",
                                     trainable=False)
        super().build(input_shape)

    def set_table(self, table: np.ndarray) -> None:
        if not self.built:
            self.build()
        self.table.assign(table)

    def call(self, ids):
        return tf.gather(self.table, ids)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}


class L2Normalize(tf.keras.layers.Layer):
    def call(self, x):
        return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


class ScaledDot(tf.keras.layers.Layer):
    """gamma * <u, i> per row: one logit per (user, item) pair, never reduced over the batch."""

    def __init__(self, gamma: float, **kwargs):
        super().__init__(**kwargs)
        self.gamma = float(gamma)

    def call(self, inputs):
        user, item = inputs
        return pair_logits(user, item, self.gamma)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@dataclass
class Towers:
    user: tf.keras.Model     # user tower inputs (ids, weights, history vectors) -> embedding
    item: tf.keras.Model     # item tower inputs (ids, the item's vector) -> embedding
    scorer: tf.keras.Model   # all transformed features -> logit (training model, content looked up)
    content: FrozenTable | None  # the run's content vectors by Transform's row (training only)
    spec: FeatureSpec

    def tower_inputs(self, transformed: dict, tower: str) -> dict:
        """A tower's inputs from Transform's outputs: content rows looked up in the frozen table."""
        return tower_inputs(self.spec, self.content, transformed, tower)


def tower_inputs(spec: FeatureSpec, content, transformed: dict, tower: str) -> dict:
    out = {}
    for name, source in zip(model_input_names(spec, tower), transformed_input_names(spec, tower), strict=True):
        out[name] = content(transformed[source]) if name != source else transformed[source]
    return out


def _embed_feature(f: Feature, inputs, tables, seed: int) -> tf.Tensor:
    if f.kind == "pretrained":
        emb = inputs[f.name]
        present = has_content(emb)
        if f.reduce == "attention":
            return SequenceEncoder(f.maxlen, f.embed_dim, f.heads, f.blocks, f.dropout or 0.0, seed,
                                   name=f"encode_{f.name}")(emb, present)
        if f.reduce == "position":
            return PositionPool(f.maxlen, name=f"pool_{f.name}")(emb, present)
        if f.reduce:
            return MaskedPool("mean" if f.reduce == "mean" else "sum", name=f"pool_{f.name}")(emb, present)
        return emb
    x = inputs[transformed_name(f.name)]
    emb = tables[f.group](x)
    if f.kind == "sparse":
        return emb
    if f.weight_name:
        return MaskedPool("weighted", name=f"pool_{f.name}")(emb, x, inputs[transformed_name(f.weight_name)])
    if f.reduce == "position":
        return PositionPool(f.maxlen, name=f"pool_{f.name}")(emb, x)
    return MaskedPool("mean", name=f"pool_{f.name}")(emb, x)


def _tower(name: str, x: tf.Tensor, units: list[int], cfg: TrainerConfig) -> tf.Tensor:
    for i, n in enumerate(units):
        last = i == len(units) - 1
        x = tf.keras.layers.Dense(n, use_bias=not cfg.batch_norm, name=f"{name}_dense_{i}",
                                  kernel_initializer=tf.keras.initializers.GlorotUniform(cfg.seed + i))(x)
        if cfg.batch_norm:
            x = tf.keras.layers.BatchNormalization(name=f"{name}_bn_{i}")(x)
        x = tf.keras.layers.Activation(cfg.output_activation if last else cfg.activation,
                                       name=f"{name}_act_{i}")(x)
        if cfg.dropout and not last:
            x = tf.keras.layers.Dropout(cfg.dropout, seed=cfg.seed + i, name=f"{name}_dropout_{i}")(x)
    if cfg.normalize:
        x = L2Normalize(name=f"{name}_l2")(x)
    return x


def build_towers(spec: FeatureSpec, vocab_sizes: dict[str, int], pretrained_table: np.ndarray | None,
                 cfg: TrainerConfig) -> Towers:
    tables = {
        group: tf.keras.layers.Embedding(
            vocab_sizes[group], spec.group_embed_dim(group), name=f"embed_{group}",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=cfg.embedding_stddev, seed=cfg.seed))
        for group in spec.vocab_groups()
    }
    pretrained, dim = None, 0
    if pretrained_table is not None:
        pretrained = FrozenTable(*pretrained_table.shape, name="pretrained_items")
        pretrained.set_table(pretrained_table)
        dim = pretrained.dim

    towers = {}
    for tower in ("user", "item"):
        inputs = _inputs(spec, tower, dim)
        parts = [_embed_feature(f, inputs, tables, cfg.seed) for f in spec.tower_features(tower)]
        x = parts[0] if len(parts) == 1 else tf.keras.layers.Concatenate(name=f"{tower}_concat")(parts)
        units = cfg.user_units if tower == "user" else cfg.item_units
        towers[tower] = tf.keras.Model(inputs, _tower(tower, x, units, cfg), name=f"{tower}_tower")

    # The training model: Transform's outputs in, the content rows looked up in front of the towers.
    transformed = {}
    for tower in ("user", "item"):
        for name, source in zip(model_input_names(spec, tower), transformed_input_names(spec, tower), strict=True):
            keras_input = towers[tower].input[name]
            transformed[source] = (tf.keras.Input(shape=keras_input.shape[1:-1], dtype=tf.int64, name=source)
                                   if name != source else
                                   tf.keras.Input(shape=keras_input.shape[1:], dtype=keras_input.dtype, name=source))
    user_vec = towers["user"](tower_inputs(spec, pretrained, transformed, "user"))
    item_vec = towers["item"](tower_inputs(spec, pretrained, transformed, "item"))
    logit = ScaledDot(cfg.gamma, name="score_logit")([user_vec, item_vec])
    scorer = tf.keras.Model(transformed, logit, name="dssm")
    return Towers(user=towers["user"], item=towers["item"], scorer=scorer, content=pretrained, spec=spec)


def hidden_id_features(spec: FeatureSpec, towers: Towers) -> list[tuple[str, int]]:
    """(transformed feature, rows of its table) of the features that hold item ids: the item id's own
    vocabulary group (post_id, read_post_id); none when the towers embed no item id."""
    group = next((f.group for f in spec.features if f.kind != "pretrained" and f.column == spec.item_id), None)
    if group is None:
        return []
    layers = [m for m in (towers.item, towers.user) for m in m.layers if m.name == f"embed_{group}"]
    rows = int(layers[0].input_dim)
    return [(transformed_name(f.name), rows) for f in spec.features if f.kind != "pretrained" and f.group == group]


class TwoTowerTrainer(tf.keras.Model):
    """Fits the towers with the configured loss; tracks the loss and the AUC of the pair score.

    Inputs are the transformed features (tower inputs plus the item index used by the in-batch
    losses); the label is act. The exported model is Towers.scorer, which shares these weights.
    """

    def __init__(self, towers: Towers, spec: FeatureSpec, cfg: TrainerConfig, item_log_q: np.ndarray | None = None,
                 catalog: dict[str, np.ndarray] | None = None, **kwargs):
        super().__init__(**kwargs)
        if cfg.loss not in LOSS_FUNCTIONS:
            raise ValueError(f"loss must be one of {', '.join(LOSS_FUNCTIONS)}, got '{cfg.loss}'")
        self.loss_fn = LOSS_FUNCTIONS[cfg.loss]
        self.user_tower, self.item_tower = towers.user, towers.item  # attributes: tracked variables
        self.content = towers.content
        self.spec = spec
        self.cfg = cfg
        self.item_inputs = transformed_input_names(spec, "item")
        self.hidden_ids = hidden_id_features(spec, towers) if cfg.id_dropout else []
        self.item_index = spec.item_index
        self.weight_key = spec.weight
        self.item_log_q = None if item_log_q is None else tf.constant(item_log_q, tf.float32)
        if cfg.uniform_negatives and catalog is None:
            raise ValueError("trainer.uniform_negatives needs the catalog of the training split's items")
        # The uniform negatives' catalog: item tower inputs and item index per distinct item.
        self.catalog = {k: tf.constant(v) for k, v in catalog.items()} if cfg.uniform_negatives else None
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.auc = tf.keras.metrics.AUC(name="auc", from_logits=True)

    @property
    def metrics(self):
        return [self.loss_tracker, self.auc]

    def call(self, inputs, training=False):
        user = self.user_tower(tower_inputs(self.spec, self.content, inputs, "user"), training=training)
        item = self.item_tower(tower_inputs(self.spec, self.content, inputs, "item"), training=training)
        return user, item

    def _hide_ids(self, x: dict) -> dict:
        """Cold start (trainer.id_dropout): each step a share of the item-id vocabulary is hidden,
        the same ids in the clicked items, the candidates and the read histories (mapped to the first
        out-of-vocabulary row, as a post unknown to the model is at serving time). The content path
        learns to rank an item without its id, and the user tower sees how much of a history the
        model does not know, so that readers of unknown posts can be pointed at unknown posts."""
        if not self.hidden_ids:
            return x
        seed = tf.stack([tf.constant(self.cfg.seed + 1, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        out = dict(x)
        for name, rows in self.hidden_ids:
            if name not in x:  # the drawn candidates carry the item tower's ids only
                continue
            ids = x[name]
            hidden = tf.random.stateless_uniform([rows], seed) < self.cfg.id_dropout
            hide = tf.logical_and(tf.gather(hidden, ids), tf.not_equal(ids, 0))  # padding stays padding
            out[name] = tf.where(hide, tf.constant(rows - 1, ids.dtype), ids)  # rows - 1: the OOV row
        return out

    def _loss(self, x, y, training):
        if training:
            x = self._hide_ids(x)
        user, item = self(x, training=training)
        cfg = self.cfg
        weight = x[self.weight_key] if self.weight_key else None
        ids = tf.reshape(x[self.item_index], [-1])
        log_q = tf.gather(self.item_log_q, ids) if (cfg.logq_correction and self.item_log_q is not None) else None
        uniform = self._uniform_negatives() if training and self.catalog is not None else None
        loss = self.loss_fn(user, item, y, ids, log_q, weight, cfg, uniform)
        return loss, pair_logits(user, item, cfg.gamma), weight

    def _uniform_negatives(self) -> UniformNegatives:
        """cfg.uniform_negatives catalog items drawn with replacement, a new draw every step (seeded
        by trainer.seed and the step), through the item tower. Training only: the eval loss stays the
        in-batch one, comparable between runs."""
        cfg = self.cfg
        size = int(self.catalog[self.item_index].shape[0])
        seed = tf.stack([tf.constant(cfg.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        draw = tf.random.stateless_uniform([cfg.uniform_negatives], seed, minval=0, maxval=size, dtype=tf.int64)
        drawn = self._hide_ids({k: tf.gather(self.catalog[k], draw) for k in self.item_inputs})
        item = self.item_tower(tower_inputs(self.spec, self.content, drawn, "item"), training=True)
        ids = tf.gather(self.catalog[self.item_index], draw)
        log_q = tf.gather(self.item_log_q, ids) if (cfg.logq_correction and self.item_log_q is not None) else None
        return UniformNegatives(item, ids, log_q, size)

    def _update(self, loss, logits, y, weight):
        self.loss_tracker.update_state(loss)
        self.auc.update_state(tf.reshape(y, [-1]), logits,
                              sample_weight=None if weight is None else tf.reshape(weight, [-1]))
        return {m.name: m.result() for m in self.metrics}

    # Plain TensorFlow ops with Python control flow on Python values only: autograph would spend most
    # of the Trainer's start converting Keras' code, call by call, and change nothing.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        x, y = data
        # Each replica's loss is the mean over its share of the batch; the strategy sums the
        # replicas' gradients, so each is scaled by 1/replicas (1 without a strategy).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, logits, weight = self._loss(x, y, training=True)
            scaled = loss / tf.cast(replicas, loss.dtype)
        variables = self.trainable_variables
        if not variables:
            raise ValueError("the towers' variables are not tracked by the trainer")
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables, strict=True))
        return self._update(loss, logits, y, weight)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        x, y = data
        loss, logits, weight = self._loss(x, y, training=False)
        return self._update(loss, logits, y, weight)


def item_log_q(positive_counts: np.ndarray) -> np.ndarray:
    """log q per item index (0 and the OOV index V+1 included): clicks of the item / all clicks.
    positive_counts[i] is the clicks of the vocabulary's item i (index i + 1).

    Items never clicked get one click, so that log q stays finite (they are never sampled as
    in-batch candidates anyway)."""
    counts = np.ones(len(positive_counts) + 2, np.float64)
    counts[1:-1] = np.maximum(np.asarray(positive_counts, np.float64), 1)
    return np.log(counts / counts[1:-1].sum()).astype(np.float32)


OPTIMIZERS = {"adam": tf.keras.optimizers.Adam, "adagrad": tf.keras.optimizers.Adagrad, "sgd": tf.keras.optimizers.SGD}
if tuple(OPTIMIZERS) != config.OPTIMIZERS:  # the config accepts exactly the optimizers that exist
    raise ImportError(f"model/config.py OPTIMIZERS {config.OPTIMIZERS} != the registry {tuple(OPTIMIZERS)}")


def make_optimizer(cfg: TrainerConfig) -> tf.keras.optimizers.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{cfg.optimizer}'")
    return OPTIMIZERS[cfg.optimizer](learning_rate=cfg.learning_rate)
