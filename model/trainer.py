"""TFX Trainer run_fn: train the DSSM on Transform's output and export the serving signatures.

Exported SavedModel (Format-Serving), each signature over serialized tf.Examples with the raw
features ExampleGen emits plus the content vectors by value (input `examples`, string [None]; see
ServingModule); the Transform graph is inside:
  serving_default      -> {"score": sigmoid(gamma * dot(user, item))}   float [None]
  user_embedding       -> {"embedding": user tower output}               float [None, d]
  item_embedding       -> {"embedding": item tower output}               float [None, d]
  user_embedding_raw, item_embedding_raw: the same towers on named dense tensors (no parsing).
Training metrics (loss, AUC on the eval split, steps) go to <model_run>/metrics.json and
TensorBoard logs to <model_run>/. <model>/warm_start/ keeps what a later span's run starts from
(model/warm_start.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from common import signature_names
from common.outputs import OutputReport
from common.progress import RateLog, log
from model import warm_start
from model.config import TrainerConfig
from model.preprocessing import ITEM_POSITIVE_COUNTS, ITEM_VOCAB, vocab_size_with_reserved
from model.towers import TwoTowerTrainer, build_towers, item_log_q, make_optimizer, model_input_names
from model.trainer_input import item_catalog, split_input
from schema import item_vectors
from schema.spec import FeatureSpec, vocab_name
from serving.request_cost import CONTRACT_FILE

METRICS_FILE = "metrics.json"
EXAMPLES_INPUT = "examples"


def read_metrics(model_run_uri: str) -> dict:
    """The Trainer's metrics.json ({} when it wrote none)."""
    path = os.path.join(model_run_uri, METRICS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _training_figures(m: dict) -> str:
    if not m:
        return ""
    auc = "undefined" if m.get("eval_auc") is None else f"{m['eval_auc']:.3f}"
    best = (f" (best at step {m['best_step']:,}{', stopped early' if m.get('stopped_early') else ''})"
            if "best_step" in m else "")
    return (f"{m['train_steps']:,} steps{best}, train loss {m['train_loss']:.3f}, "
            f"eval loss {m['eval_loss']:.3f}, eval AUC {auc}")


OUTPUT_REPORT = OutputReport("ModelRun", "training", read=lambda a, custom: read_metrics(a.uri),
                             figures=_training_figures, uri_key="model_run_uri")


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
        return {"score": tf.sigmoid(self._gamma * tf.reduce_sum(user * item, axis=-1))}

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


def item_log_q_of(tft_output):
    """log q(item) of each vocabulary item, from its clicks: the in-batch losses' sampling correction."""
    return item_log_q(clicks_in_vocab_order(tft_output.vocabulary_file_by_name(ITEM_VOCAB),
                                            tft_output.vocabulary_file_by_name(ITEM_POSITIVE_COUNTS)))


def clicks_in_vocab_order(vocab_path: str, counts_path: str, batch: int = 1 << 16) -> np.ndarray:
    """[items of the vocabulary]: the clicks of each, from tf.Transform's `count item` file. Read
    and joined with TensorFlow ops in batches: no Python object per item."""
    keys, counts = [], []
    for lines in tf.data.TextLineDataset(counts_path).batch(batch):
        parts = tf.strings.split(lines, " ", maxsplit=1).to_tensor(shape=[None, 2])
        counts.append(tf.strings.to_number(parts[:, 0], tf.float64))
        keys.append(parts[:, 1])
    vocab = tf.data.TextLineDataset(vocab_path).batch(batch)
    if not keys:  # no click in the training split
        return np.zeros(sum(int(tf.size(b)) for b in vocab), np.float64)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf.concat(keys, 0), tf.concat(counts, 0)),
                                      default_value=tf.constant(0.0, tf.float64))
    return np.concatenate([table.lookup(items).numpy() for items in vocab] or [np.zeros(0)])


class _StepCounter(tf.keras.callbacks.Callback):
    """Counts the steps trained across Keras epochs from Keras' own batch index: with
    steps_per_execution N the batch callbacks run once per N steps."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self._epoch_start = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.steps

    def _advance(self, batch: int) -> int:
        """The count before this call; self.steps becomes the count after it."""
        before, self.steps = self.steps, self._epoch_start + batch + 1
        return before


class ProgressAndCurve(_StepCounter):
    """Logs steps done, rate and time left; keeps about 100 points of (step, loss, AUC) for the report.

    Keras reports the running mean of loss and AUC since the start of the epoch."""

    def __init__(self, total_steps: int | None):
        super().__init__()
        self.total = total_steps
        self.every = max(1, (total_steps or 10_000) // 100)
        self.rate = RateLog("training", "steps", total=total_steps)
        self.curve: list[dict] = []
        self.figures = ""  # the last step's "loss ..., AUC ..." for the final line

    def on_train_batch_end(self, batch, logs=None):
        before = self._advance(batch)
        step, logs = self.steps, logs or {}
        loss, auc = float(logs.get("loss", float("nan"))), float(logs.get("auc", float("nan")))
        if step // self.every > before // self.every or step == self.total:
            self.curve.append({"step": step, "loss": loss, "auc": auc})
        self.figures = f"loss {loss:.3f}, AUC {auc:.3f}"
        self.rate.update(step, self.figures)

    def on_train_end(self, logs=None):  # early stopping may end training before the first interval
        self.rate.finish(self.steps, self.figures)


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or weight; nothing is exported."""


def first_non_finite(variables) -> str | None:
    """The name of the first variable holding NaN or inf, or None."""
    for v in variables:
        if not bool(tf.reduce_all(tf.math.is_finite(v))):
            return v.name
    return None


class StopOnNonFinite(_StepCounter):
    """Stops training with NonFiniteTrainingError, naming the step and the first non-finite tensor, as
    soon as the loss is non-finite (checked after every call of the compiled step, i.e. every
    steps_per_execution steps; a NaN stays in the running mean) or a trainable weight is (every
    `weights_every` steps and at the end): a NaN model must never be exported."""

    def __init__(self, weights_every: int = 100):
        super().__init__()
        self.weights_every = weights_every

    def _fail(self, what: str) -> None:
        raise NonFiniteTrainingError(f"training stopped at step {self.steps}: {what}; the model is not exported "
                                     f"(look for extreme values in the inputs)")

    def on_train_batch_end(self, batch, logs=None):
        before = self._advance(batch)
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):
            bad = first_non_finite(self.model.trainable_variables)
            self._fail(f"the loss is {loss}" + (f"; first non-finite weight: {bad}" if bad else ""))
        if self.steps // self.weights_every > before // self.weights_every:
            self.check_weights()

    def check_weights(self) -> None:
        bad = first_non_finite(self.model.variables)
        if bad:
            self._fail(f"first non-finite weight: {bad}")


def count_records(files) -> int:
    """Rows in gzipped TFRecord files, counted by tf.data (C++), for the passes-over-the-data warning."""
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(files) if isinstance(files, str) else
                                      [f for pattern in files for f in tf.io.gfile.glob(pattern)],
                                      compression_type="GZIP")
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def defined_auc(auc_metric, value: float, split: str) -> tuple[float | None, str | None]:
    """(AUC, None), or (None, the reason) when the split had only clicks or no clicks: AUC is then
    undefined, and Keras would report 0 or 1."""
    positives = float(auc_metric.true_positives[0] + auc_metric.false_negatives[0])
    negatives = float(auc_metric.false_positives[0] + auc_metric.true_negatives[0])
    if positives > 0 and negatives > 0:
        return value, None
    kind = "no clicks (act=1)" if positives == 0 else "only clicks (no act=0 rows)"
    return None, f"{split} AUC is undefined: the {split} split has {kind}"


def steps_per_execution(cfg: TrainerConfig, train_steps: int) -> int:
    """cfg.steps_per_execution, or a divisor of it when early stopping's last, shorter epoch (the
    data runs out after train_steps % eval_every_steps steps) would end inside a call: Keras would
    train those steps without counting them. cfg.eval_every_steps is the interval in use (eval_interval)."""
    if cfg.early_stopping and not cfg.epochs and not cfg.eval_every_steps:
        raise ValueError("steps_per_execution needs the eval interval in use: eval_interval(cfg, train_rows)")
    if cfg.early_stopping and not cfg.epochs and train_steps % cfg.eval_every_steps:
        return math.gcd(cfg.steps_per_execution, train_steps % cfg.eval_every_steps)
    return cfg.steps_per_execution


AUTO_EVAL_PASS_FRACTION = 0.5  # eval_every_steps 0: the eval loss every half pass over the training rows ...
AUTO_EVAL_MAX_STEPS = 250      # ... or every 250 steps on larger data


def eval_interval(cfg: TrainerConfig, train_rows: int) -> int:
    """The steps between two evaluations: cfg.eval_every_steps, or when 0 half a pass over the
    training rows rounded down to a multiple of steps_per_execution (at least one call, at most
    AUTO_EVAL_MAX_STEPS)."""
    if cfg.eval_every_steps:
        return cfg.eval_every_steps
    per_call = max(1, cfg.steps_per_execution)
    half_pass = math.ceil(train_rows * AUTO_EVAL_PASS_FRACTION / cfg.batch_size)
    return max(per_call, min(half_pass, AUTO_EVAL_MAX_STEPS) // per_call * per_call)


def run_fn(fn_args: FnArgs) -> None:
    custom = fn_args.custom_config
    spec = FeatureSpec.from_json(custom["feature_spec"])
    cfg = TrainerConfig(**custom["trainer"])
    # Before any TensorFlow op runs: a multi-worker strategy's collective ops are configured at start-up.
    strategy, task = distribution()
    train_rows = count_records(fn_args.train_files)
    cfg = dataclasses.replace(cfg, eval_every_steps=eval_interval(cfg, train_rows))
    num_oov = int(custom.get("num_oov_buckets", 1))
    tf.keras.utils.set_random_seed(cfg.seed)

    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    vocab_sizes = {g: vocab_size_with_reserved(tft_output, g, num_oov) for g in spec.vocab_groups()}
    table = item_vectors.load_table(custom["item_vectors_dir"]) if any(
        f.kind == "pretrained" for f in spec.features) else None
    chief = task is None
    with strategy.scope():  # every variable (tables, optimizer slots) is created under the strategy
        towers = build_towers(spec, vocab_sizes, table, cfg)
        vocab_files = {g: tft_output.vocabulary_file_by_name(vocab_name(g)) for g in spec.vocab_groups()}
        warm = _warm_start(fn_args.base_model, custom, towers.scorer, vocab_files, num_oov)
        catalog = item_catalog(fn_args.train_files, tft_output.transformed_feature_spec(), spec) \
            if cfg.uniform_negatives else None
        if catalog is not None:
            log(f"uniform negatives: {cfg.uniform_negatives} per step from the training split's "
                f"{len(next(iter(catalog.values()))):,} distinct items")
        trainer = TwoTowerTrainer(towers, spec, cfg, item_log_q_of(tft_output), catalog)
        trainer.compile(optimizer=make_optimizer(cfg),
                        steps_per_execution=steps_per_execution(cfg, cfg.train_steps))
        # Step logs hold each replica's metric values; Keras would sum them across workers
        # (loss and AUC x workers). The progress lines show the first worker's; the figures kept
        # below are read from the metrics themselves, which aggregate every worker.
        trainer.distribute_reduction_method = "first"

    # With early stopping each of the `epochs` passes is a Keras epoch (validated after it); without,
    # the dataset repeats them and Keras runs one epoch over it.
    budget = cfg.cache_max_mb * 2**20
    feature_spec = tft_output.transformed_feature_spec()

    train_in = split_input(fn_args.train_files, feature_spec, spec, train_rows, budget, cfg.batch_size, cfg.seed,
                           True, (1 if cfg.early_stopping else cfg.epochs) if cfg.epochs else None)
    eval_rows = count_records(fn_args.eval_files)
    eval_steps = cfg.eval_steps or max(1, math.ceil(eval_rows / cfg.batch_size))  # the whole split by default
    eval_in = split_input(fn_args.eval_files, feature_spec, spec, eval_rows,
                          budget - (train_in.bytes or 0) if train_in.source == "memory" else budget,
                          cfg.batch_size, cfg.seed, False, 1)
    for split, got in (("training", train_in), ("eval", eval_in)):
        log(f"{split} split: {got.rows:,} rows "
            f"{'held in memory' if got.source == 'memory' else 'read from the files every pass'} ({got.reason})")
    train_ds, eval_ds = train_in.dataset, eval_in.dataset
    if strategy.num_replicas_in_sync > 1:  # a batch is split between the workers (files may be fewer)
        train_ds, eval_ds = (_shard_by_data(d) for d in (train_ds, eval_ds))
    log_dir = fn_args.model_run_dir if chief else f"{fn_args.model_run_dir.rstrip('/')}-{task}"
    progress = ProgressAndCurve(None if cfg.epochs else cfg.train_steps)
    guard = StopOnNonFinite()
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=50), progress, guard]
    planned_passes = (cfg.epochs if cfg.epochs else cfg.train_steps * cfg.batch_size / max(train_rows, 1))
    warnings = []
    if planned_passes > cfg.warn_passes and not cfg.early_stopping:  # with it, only if it does not stop in time
        warnings.append(f"{planned_passes:.0f} passes over {train_rows:,} training rows planned "
                        f"(more than {cfg.warn_passes:g}): small data overfits; set trainer.early_stopping "
                        f"or fewer train_steps")
        log(f"warning: {warnings[-1]}")
    # Keras epochs of eval_every_steps steps (or whole passes with `epochs`), the eval split's loss
    # after each: EarlyStopping keeps the best weights. Without early stopping: one epoch, as before.
    if cfg.epochs:
        # steps counted from the rows: with steps_per_execution > 1 Keras needs every epoch's length
        epochs = cfg.epochs if cfg.early_stopping else 1
        steps_per_epoch = max(1, math.ceil(train_rows * (1 if cfg.early_stopping else cfg.epochs) / cfg.batch_size))
    elif cfg.early_stopping:
        epochs = math.ceil(cfg.train_steps / cfg.eval_every_steps)
        steps_per_epoch = cfg.eval_every_steps
    else:
        epochs, steps_per_epoch = 1, cfg.train_steps
    stopper = None
    if cfg.early_stopping:
        stopper = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min",
                                                   restore_best_weights=True, verbose=0)
        callbacks.append(stopper)
    if cfg.early_stopping and not cfg.epochs and cfg.train_steps % cfg.eval_every_steps:
        train_ds = train_ds.take(cfg.train_steps)  # the last epoch is shorter: stop at train_steps
    history = trainer.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=callbacks,
                          validation_data=eval_ds if cfg.early_stopping else None,
                          validation_steps=eval_steps)
    guard.check_weights()
    if stopper is None:  # the metrics of the one epoch, aggregated over every worker
        trained = {k: float(v) for k, v in trainer.get_metrics_result().items()}  # before evaluate resets them
    else:  # the validation ran last: the training figures of the best epoch come from the history
        best = stopper.best_epoch if stopper.best_epoch is not None else -1
        trained = {k: float(history.history[k][best]) for k in ("loss", "auc")}
    results = trainer.evaluate(eval_ds, steps=eval_steps, return_dict=True, verbose=0)
    eval_auc, auc_note = defined_auc(trainer.auc, float(results["auc"]), "eval")
    if auc_note:
        log(f"note: {auc_note}")
    best_step, stopped_early = progress.steps, False
    if stopper is not None and stopper.best_epoch is not None and stopper.best_weights is not None:
        # EarlyStopping restores the best weights only when it stops; at the end of the planned epochs
        # it keeps the last ones. Either way the model exported is the best one seen.
        trainer.set_weights(stopper.best_weights)
        per_epoch = steps_per_epoch or math.ceil(progress.steps / max(epochs, 1))
        best_step = min(progress.steps, (stopper.best_epoch + 1) * per_epoch)
        stopped_early = stopper.stopped_epoch > 0
        results = trainer.evaluate(eval_ds, steps=eval_steps, return_dict=True, verbose=0)
        eval_auc, auc_note = defined_auc(trainer.auc, float(results["auc"]), "eval")
    passes = progress.steps * cfg.batch_size / max(train_rows, 1)
    if cfg.early_stopping and passes > cfg.warn_passes:
        warnings.append(f"{passes:.0f} passes over {train_rows:,} training rows made (more than {cfg.warn_passes:g}) "
                        f"before early stopping ended training: the eval loss kept improving slowly; the best "
                        f"weights (step {best_step:,}) are kept")
        log(f"warning: {warnings[-1]}")
    # Steps are counted by the callback: when an epoch-based run reaches the end of its data, Keras
    # has already counted one more optimizer iteration for the call that found no batch.
    metrics = {"loss_kind": cfg.loss, "train_steps": progress.steps,
               "optimizer_iterations": int(trainer.optimizer.iterations.numpy()),
               "best_step": int(best_step), "stopped_early": bool(stopped_early),
               "train_rows": train_rows, "input": {split: {"source": got.source, "bytes": got.bytes}
                                                   for split, got in (("train", train_in), ("eval", eval_in))},
               "planned_passes": round(planned_passes, 2), "passes": round(passes, 2), "warnings": warnings,
               "eval_every_steps": cfg.eval_every_steps,
               "train_loss": trained["loss"], "train_auc": trained["auc"],
               "eval_loss": float(results["loss"]), "eval_auc": eval_auc, "eval_auc_note": auc_note,
               "vocab_sizes": vocab_sizes, "curve": progress.curve,
               "eval_curve": eval_curve(history, steps_per_epoch, progress.steps), "weight_sums": weight_sums(trainer),
               "warm_start": warm}
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    # Every worker saves (saving reads distributed variables collectively); only the chief's counts.
    # A worker's logs stay beside the chief's (<model_run>-worker-<i>): its metrics.json records
    # the same weight sums as the chief's when the strategy kept the replicas in step.
    if chief:
        export(towers, tft_output, spec, fn_args.serving_model_dir)
        warm_start.save(os.path.dirname(fn_args.serving_model_dir.rstrip("/")), towers.scorer, vocab_files, num_oov,
                        custom.get("span"))
    else:
        scratch = tempfile.mkdtemp(prefix="worker-export-")
        export(towers, tft_output, spec, os.path.join(scratch, "model"))
        shutil.rmtree(scratch)


def _warm_start(base_model: str | None, custom: dict, model: tf.keras.Model, vocab_files: dict, num_oov: int) -> dict:
    """Loads the resolved base model's weights (model/warm_start.py); {"from": None, "note": why}
    when there is none or it does not fit. Logged either way."""
    if not custom.get("warm_start"):
        note = custom.get("no_warm_start_because") or "continuous.warm_start is false"
    elif custom.get("span") is None:
        note = "the logs have no {SPAN}: warm start follows daily spans"
    elif not base_model:
        note = f"no model trained on a span before {custom['span']} was pushed"
    else:
        try:
            done = warm_start.load(base_model, model, vocab_files, num_oov)
        except warm_start.WarmStartRefused as e:
            note = f"not warm started from {os.path.dirname(base_model.rstrip('/'))}: {e}"
        else:
            log(f"warm start from the model of span {done['span']} ({done['from']}): "
                f"{warm_start.rows_text(done['groups'])}")
            return {**done, "note": None}
    log(f"no warm start: {note}")
    return {"from": None, "note": note}


def eval_curve(history: tf.keras.callbacks.History, steps_per_epoch: int, steps: int) -> list[dict]:
    """The eval split's loss and AUC after each epoch, at the step it was taken: what early stopping
    chose from. Empty without early stopping (no validation during training)."""
    losses = history.history.get("val_loss", [])
    return [{"step": min(steps, (i + 1) * steps_per_epoch), "loss": float(loss),
             "auc": float(history.history["val_auc"][i])} for i, loss in enumerate(losses)]


def weight_sums(model: tf.keras.Model) -> dict[str, float]:
    """{variable: sum of its values}: a cheap fingerprint to compare replicas and runs."""
    return {v.name: float(tf.reduce_sum(tf.cast(v, tf.float64))) for v in model.variables}


def distribution() -> tuple[tf.distribute.Strategy, str | None]:
    """(strategy, task): MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of several workers
    (as Kubeflow's TFJob or Vertex AI set it), else the default strategy on one process. `task` is
    None for the chief (the one that exports), else e.g. 'worker-1' (where its logs go)."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster") or {}
    if sum(len(v) for v in cluster.values()) <= 1:
        return tf.distribute.get_strategy(), None
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = config.get("task") or {}
    chief = task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index") == 0
                                            and "chief" not in cluster)
    return strategy, None if chief else f"{task.get('type')}-{task.get('index')}"


def _shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)

