"""TFX Trainer run_fn: train the DSSM on Transform's output, then export it (model/export.py: five
signatures, the Transform graph inside). Callbacks are in model/callbacks.py, the metrics file and
its report in model/run_metrics.py. Training metrics (loss, AUC on the eval split, steps) go to
<model_run>/metrics.json and TensorBoard logs to <model_run>/. <model>/warm_start/ keeps what a
later span's run starts from (model/warm_start.py).
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

from common.progress import log
from model import warm_start
from model.callbacks import ProgressAndCurve, StopOnNonFinite
from model.config import TrainerConfig
from model.export import export
from model.preprocessing import ITEM_POSITIVE_COUNTS, ITEM_VOCAB, vocab_size_with_reserved
from model.run_metrics import METRICS_FILE
from model.towers import TwoTowerTrainer, build_towers, item_log_q, make_optimizer
from model.trainer_input import item_catalog, split_input
from schema import item_vectors
from schema.spec import FeatureSpec, vocab_name


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


def epoch_schedule(cfg: TrainerConfig, train_rows: int) -> tuple[int, int, int | None]:
    """(Keras epochs, steps per epoch, steps to take from the training data or None): epochs of
    eval_every_steps steps (whole passes with `epochs`), the eval split's loss after each, so that
    EarlyStopping keeps the best weights; without early stopping one epoch, as before. The last
    epoch of a train_steps run may be shorter: the data is then cut at train_steps."""
    if cfg.epochs:
        # steps counted from the rows: with steps_per_execution > 1 Keras needs every epoch's length
        epochs = cfg.epochs if cfg.early_stopping else 1
        return epochs, max(1, math.ceil(train_rows * (1 if cfg.early_stopping else cfg.epochs) / cfg.batch_size)), None
    if cfg.early_stopping:
        take = cfg.train_steps if cfg.train_steps % cfg.eval_every_steps else None
        return math.ceil(cfg.train_steps / cfg.eval_every_steps), cfg.eval_every_steps, take
    return 1, cfg.train_steps, None


def run_fn(fn_args: FnArgs) -> None:
    custom = fn_args.custom_config
    spec = FeatureSpec.from_json(custom["feature_spec"])
    # Before any TensorFlow op runs: a multi-worker strategy's collective ops are configured at start-up.
    strategy, task = distribution()
    train_rows = count_records(fn_args.train_files)
    cfg = TrainerConfig(**custom["trainer"])
    cfg = dataclasses.replace(cfg, eval_every_steps=eval_interval(cfg, train_rows))
    num_oov = int(custom.get("num_oov_buckets", 1))
    tf.keras.utils.set_random_seed(cfg.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    built = _build(fn_args, spec, cfg, tft_output, strategy, num_oov)
    train_in, eval_in, eval_steps = _split_inputs(fn_args, spec, cfg, tft_output, train_rows)
    train_ds, eval_ds = train_in.dataset, eval_in.dataset
    if strategy.num_replicas_in_sync > 1:  # a batch is split between the workers (files may be fewer)
        train_ds, eval_ds = (_shard_by_data(d) for d in (train_ds, eval_ds))
    log_dir = fn_args.model_run_dir if task is None else f"{fn_args.model_run_dir.rstrip('/')}-{task}"
    progress, guard = ProgressAndCurve(None if cfg.epochs else cfg.train_steps), StopOnNonFinite()
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=50), progress, guard]
    planned_passes = (cfg.epochs if cfg.epochs else cfg.train_steps * cfg.batch_size / max(train_rows, 1))
    warnings = []
    if planned_passes > cfg.warn_passes and not cfg.early_stopping:  # with it, only if it does not stop in time
        warnings.append(_warn(f"{planned_passes:.0f} passes over {train_rows:,} training rows planned (more than "
                              f"{cfg.warn_passes:g}): small data overfits; set trainer.early_stopping or fewer "
                              "train_steps"))
    epochs, steps_per_epoch, take_steps = epoch_schedule(cfg, train_rows)
    stopper = None
    if cfg.early_stopping:
        stopper = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min",
                                                   restore_best_weights=True, verbose=0)
        callbacks.append(stopper)
    trainer = built["trainer"]
    history = trainer.fit(train_ds.take(take_steps) if take_steps is not None else train_ds, epochs=epochs,
                          steps_per_epoch=steps_per_epoch, verbose=0, callbacks=callbacks,
                          validation_data=eval_ds if cfg.early_stopping else None, validation_steps=eval_steps)
    guard.check_weights()
    trained = _trained_figures(trainer, stopper, history)  # before evaluate resets the metrics
    best = _keep_best(trainer, stopper, progress, epochs, steps_per_epoch, eval_ds, eval_steps)
    passes = progress.steps * cfg.batch_size / max(train_rows, 1)
    if cfg.early_stopping and passes > cfg.warn_passes:
        warnings.append(_warn(f"{passes:.0f} passes over {train_rows:,} training rows made (more than "
                              f"{cfg.warn_passes:g}) before early stopping ended training: the eval loss kept "
                              f"improving slowly; the best weights (step {best['best_step']:,}) are kept"))
    # Steps are counted by the callback: when an epoch-based run reaches the end of its data, Keras
    # has already counted one more optimizer iteration for the call that found no batch.
    metrics = {"loss_kind": cfg.loss, "train_steps": progress.steps,
               "optimizer_iterations": int(trainer.optimizer.iterations.numpy()),
               "best_step": int(best["best_step"]), "stopped_early": bool(best["stopped_early"]),
               "train_rows": train_rows, "input": {split: {"source": got.source, "bytes": got.bytes}
                                                   for split, got in (("train", train_in), ("eval", eval_in))},
               "planned_passes": round(planned_passes, 2), "passes": round(passes, 2), "warnings": warnings,
               "eval_every_steps": cfg.eval_every_steps, "train_loss": trained["loss"], "train_auc": trained["auc"],
               "eval_loss": best["eval_loss"], "eval_auc": best["eval_auc"], "eval_auc_note": best["auc_note"],
               "vocab_sizes": built["vocab_sizes"], "curve": progress.curve,
               "eval_curve": eval_curve(history, steps_per_epoch, progress.steps), "weight_sums": weight_sums(trainer),
               "warm_start": built["warm"]}
    _save(fn_args, custom, spec, tft_output, built, metrics, log_dir, chief=task is None, num_oov=num_oov)


def _warn(message: str) -> str:
    log(f"warning: {message}")
    return message


def _build(fn_args: FnArgs, spec: FeatureSpec, cfg: TrainerConfig, tft_output, strategy, num_oov: int) -> dict:
    """The towers and the compiled TwoTowerTrainer, every variable (tables, optimizer slots) created
    under the strategy; warm-started when a base model was resolved."""
    custom = fn_args.custom_config
    vocab_sizes = {g: vocab_size_with_reserved(tft_output, g, num_oov) for g in spec.vocab_groups()}
    table = item_vectors.load_table(custom["item_vectors_dir"]) if any(
        f.kind == "pretrained" for f in spec.features) else None
    with strategy.scope():
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
        # are read from the metrics themselves, which aggregate every worker.
        trainer.distribute_reduction_method = "first"
    return {"towers": towers, "trainer": trainer, "warm": warm, "vocab_files": vocab_files,
            "vocab_sizes": vocab_sizes}


def _split_inputs(fn_args: FnArgs, spec: FeatureSpec, cfg: TrainerConfig, tft_output, train_rows: int):
    """(training input, eval input, eval steps): each split held in memory when it fits the budget
    (the training split first), else read from the files every pass (model/trainer_input.py). With
    early stopping each of the `epochs` passes is a Keras epoch; without, the dataset repeats them."""
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
    return train_in, eval_in, eval_steps


def _trained_figures(trainer, stopper, history) -> dict[str, float]:
    """Training loss and AUC: of the one epoch (the metrics, aggregated over every worker), or with
    early stopping of the best epoch (the validation ran last, so from the history)."""
    if stopper is None:
        return {k: float(v) for k, v in trainer.get_metrics_result().items()}
    best = stopper.best_epoch if stopper.best_epoch is not None else -1
    return {k: float(history.history[k][best]) for k in ("loss", "auc")}


def _keep_best(trainer, stopper, progress, epochs: int, steps_per_epoch: int, eval_ds, eval_steps: int) -> dict:
    """The best weights seen set on the model (EarlyStopping restores them only when it stops; at the
    end of the planned epochs it keeps the last ones), then the eval split's figures of those:
    {best_step, stopped_early, eval_loss, eval_auc, auc_note}."""
    best_step, stopped_early = progress.steps, False
    if stopper is not None and stopper.best_epoch is not None and stopper.best_weights is not None:
        trainer.set_weights(stopper.best_weights)
        per_epoch = steps_per_epoch or math.ceil(progress.steps / max(epochs, 1))
        best_step = min(progress.steps, (stopper.best_epoch + 1) * per_epoch)
        stopped_early = stopper.stopped_epoch > 0
    results = trainer.evaluate(eval_ds, steps=eval_steps, return_dict=True, verbose=0)
    eval_auc, auc_note = defined_auc(trainer.auc, float(results["auc"]), "eval")
    if auc_note:
        log(f"note: {auc_note}")
    return {"best_step": best_step, "stopped_early": stopped_early, "eval_loss": float(results["loss"]),
            "eval_auc": eval_auc, "auc_note": auc_note}


def _save(fn_args: FnArgs, custom: dict, spec: FeatureSpec, tft_output, built: dict, metrics: dict, log_dir: str,
          chief: bool, num_oov: int) -> None:
    """metrics.json, then the export. Every worker saves (saving reads distributed variables
    collectively); only the chief's counts. A worker's logs stay beside the chief's
    (<model_run>-worker-<i>): its metrics.json records the same weight sums as the chief's when the
    strategy kept the replicas in step."""
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    if chief:
        export(built["towers"], tft_output, spec, fn_args.serving_model_dir)
        warm_start.save(os.path.dirname(fn_args.serving_model_dir.rstrip("/")), built["towers"].scorer,
                        built["vocab_files"], num_oov, custom.get("span"))
    else:
        scratch = tempfile.mkdtemp(prefix="worker-export-")
        export(built["towers"], tft_output, spec, os.path.join(scratch, "model"))
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

