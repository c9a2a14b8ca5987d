"""TFX Trainer run_fn: train the DSSM on Transform's output and export the serving signatures.

Exported SavedModel (Format-Serving), each signature over serialized tf.Examples with the raw
features ExampleGen emits (input `examples`, string [None]); the Transform graph is inside:
  serving_default -> {"score": sigmoid(gamma * dot(user, item))}   float [None]
  user_embedding  -> {"embedding": user tower output}               float [None, d]
  item_embedding  -> {"embedding": item tower output}               float [None, d]
Training metrics (loss, AUC on the eval split, steps) go to <model_run>/metrics.json and
TensorBoard logs to <model_run>/.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

from components import item_vectors
from components.model import build_towers, make_optimizer, model_input_names, weighted_bce_from_logits
from components.preprocessing import vocab_size_with_reserved
from pipeline.config import TrainerConfig
from schema.spec import FeatureSpec

METRICS_FILE = "metrics.json"
SIGNATURE_SCORE = "serving_default"
SIGNATURE_USER = "user_embedding"
SIGNATURE_ITEM = "item_embedding"
EXAMPLES_INPUT = "examples"


def _dataset(fn_args: FnArgs, files, tft_output, spec: FeatureSpec, batch_size: int, seed: int, repeat: bool):
    """(model inputs, label) batches; other transformed features (OOV counts) are left out."""
    names = model_input_names(spec, "user") + model_input_names(spec, "item")
    return fn_args.data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=spec.label, shuffle=repeat,
                                       shuffle_seed=seed if repeat else None,
                                       num_epochs=None if repeat else 1),
        tft_output.transformed_metadata.schema).map(lambda x, y: ({k: x[k] for k in names}, y))


def _signatures(towers, tft_output, spec: FeatureSpec):
    tft_layer = tft_output.transform_features_layer()
    parse_spec = spec.raw_feature_spec(include_label=False, serving=True)
    user_inputs = model_input_names(spec, "user")
    item_inputs = model_input_names(spec, "item")
    examples_spec = tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)

    def transform(examples):
        return tft_layer(tf.io.parse_example(examples, parse_spec))

    @tf.function(input_signature=[examples_spec])
    def user_embedding(examples):
        t = transform(examples)
        return {"embedding": towers.user({k: t[k] for k in user_inputs}, training=False)}

    @tf.function(input_signature=[examples_spec])
    def item_embedding(examples):
        t = transform(examples)
        return {"embedding": towers.item({k: t[k] for k in item_inputs}, training=False)}

    @tf.function(input_signature=[examples_spec])
    def score(examples):
        t = transform(examples)
        logit = towers.scorer({k: t[k] for k in user_inputs + item_inputs}, training=False)
        return {"score": tf.sigmoid(logit)}

    return tft_layer, {SIGNATURE_SCORE: score, SIGNATURE_USER: user_embedding, SIGNATURE_ITEM: item_embedding}


def run_fn(fn_args: FnArgs) -> None:
    custom = fn_args.custom_config
    spec = FeatureSpec.from_json(custom["feature_spec"])
    cfg = TrainerConfig(**custom["trainer"])
    num_oov = int(custom.get("num_oov_buckets", 1))
    tf.keras.utils.set_random_seed(cfg.seed)

    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    vocab_sizes = {g: vocab_size_with_reserved(tft_output, g, num_oov) for g in spec.vocab_groups()}
    table = item_vectors.load_table(custom["item_vectors_dir"]) if any(
        f.kind == "pretrained" for f in spec.features) else None
    towers = build_towers(spec, vocab_sizes, table, cfg)
    towers.scorer.compile(optimizer=make_optimizer(cfg), loss=weighted_bce_from_logits(cfg.pos_weight),
                          metrics=[tf.keras.metrics.AUC(name="auc", from_logits=True)])

    train_ds = _dataset(fn_args, fn_args.train_files, tft_output, spec, cfg.batch_size, cfg.seed, True)
    eval_ds = _dataset(fn_args, fn_args.eval_files, tft_output, spec, cfg.batch_size, cfg.seed, False)
    log_dir = fn_args.model_run_dir
    history = towers.scorer.fit(
        train_ds, epochs=1, steps_per_epoch=fn_args.train_steps, verbose=2,
        callbacks=[tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=50)])
    eval_steps = fn_args.eval_steps or None
    results = towers.scorer.evaluate(eval_ds, steps=eval_steps, return_dict=True, verbose=0)
    metrics = {"train_steps": int(fn_args.train_steps), "train_loss": float(history.history["loss"][-1]),
               "train_auc": float(history.history["auc"][-1]), "eval_loss": float(results["loss"]),
               "eval_auc": float(results["auc"]), "vocab_sizes": vocab_sizes}
    tf.io.gfile.makedirs(log_dir)
    with tf.io.gfile.GFile(os.path.join(log_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)

    tft_layer, signatures = _signatures(towers, tft_output, spec)
    towers.scorer.tft_layer = tft_layer  # tracked, so that its assets are saved with the model
    towers.scorer.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures)
