"""Trainer throughput (examples/s) of one model at batch 1024 from three inputs, in one run.

    .venv/bin/python bench/trainer_throughput.py --workdir RUN_DIR --train TSV [--steps 60]

RUN_DIR is a finished pipeline run (run_pipeline.py local) on TSV; the bench reads its Transform
output and prepared item vectors. The inputs:
  transformed  the transformed TFRecords, read with tfx_bsl's TFXIO as the Trainer reads them
  in_memory    the same batches held as tensors (the compute ceiling)
  raw_tsv      the original design's input path: tf.data reads the raw TSV and parses every line at
               every step (decode_csv, string splits, vocabulary lookups, padding)
"""
import argparse
import glob
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from components import item_vectors  # noqa: E402
from components.config import TrainerConfig  # noqa: E402
from components.model import TwoTowerTrainer, build_towers, make_optimizer, model_input_names  # noqa: E402
from components.preprocessing import vocab_size_with_reserved  # noqa: E402
from schema.spec import load_spec, transformed_name, vocab_name  # noqa: E402

BATCH = 1024


def _latest(pattern: str) -> str:
    return max(glob.glob(pattern), key=lambda p: int(p.rstrip("/").split("/")[-1]))


def transformed_dataset(run_dir, tft_output, spec, names):
    examples = _latest(os.path.join(run_dir, "pipeline", "Transform", "transformed_examples", "*"))
    source = tfxio.TFExampleRecord(os.path.join(examples, "Split-train", "*"),
                                   schema=tft_output.transformed_metadata.schema)
    ds = source.TensorFlowDataset(tfxio.TensorFlowDatasetOptions(batch_size=BATCH, label_key=spec.label,
                                                                 shuffle=True, num_epochs=None))
    return ds.map(lambda x, y: ({k: x[k] for k in names}, y))


def raw_tsv_dataset(path, tft_output, spec, ids_path):
    """The original design's path: parse each TSV line every step, look ids up, pad."""
    cols = list(spec.columns)
    defaults = [[0] if spec.raw_columns[c].type == "int" else [""] for c in cols]
    tables = {g: tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        tft_output.vocabulary_file_by_name(vocab_name(g)), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1) for g in spec.vocab_groups()}
    rows = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        ids_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)

    def lookup(table, x, oov):
        i = table.lookup(x)
        return tf.where(i < 0, oov, i + 1)

    def parse(line):
        fields = dict(zip(cols, tf.io.decode_csv(line, defaults, field_delim="\t"), strict=True))
        out = {}
        for f in spec.features:
            x = fields[f.column]
            if f.kind == "pretrained":
                if f.reduce:
                    ids = tf.strings.split(x, ",")[: f.maxlen]
                    out[transformed_name(f.name)] = tf.pad(rows.lookup(ids) + 1, [[0, f.maxlen - tf.size(ids)]])
                else:
                    out[transformed_name(f.name)] = rows.lookup(x) + 1
                continue
            size = tables[f.group].size() + 1
            if f.kind == "sparse":
                out[transformed_name(f.name)] = lookup(tables[f.group], tf.strings.as_string(x) if f.dtype == "int64"
                                                       else x, size)
            elif f.weight_name:
                pairs = tf.strings.split(tf.strings.split(x, ",")[: f.maxlen], ":").to_tensor(shape=[None, 2])
                pad = [[0, f.maxlen - tf.shape(pairs)[0]]]
                out[transformed_name(f.name)] = tf.pad(lookup(tables[f.group], pairs[:, 0], size), pad)
                out[transformed_name(f.weight_name)] = tf.pad(tf.strings.to_number(pairs[:, 1]), pad)
            else:
                ids = tf.strings.split(x, ",")[: f.maxlen]
                out[transformed_name(f.name)] = tf.pad(lookup(tables[f.group], ids, size),
                                                       [[0, f.maxlen - tf.size(ids)]])
        out[transformed_name(spec.item_id)] = tf.constant(1, tf.int64)
        return out, fields[spec.label]

    ds = tf.data.TextLineDataset(path).skip(1).repeat().shuffle(BATCH * 2)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE)


def measure(trainer, ds, steps: int) -> float:
    trainer.fit(ds, epochs=1, steps_per_epoch=5, verbose=0)  # warm-up: tracing, first reads
    start = time.perf_counter()
    trainer.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    spec = load_spec()
    graph = _latest(os.path.join(a.workdir, "pipeline", "Transform", "transform_graph", "*"))
    tft_output = tft.TFTransformOutput(graph)
    prepared = glob.glob(os.path.join(a.workdir, "item_vectors", "*"))[0]
    cfg = TrainerConfig(batch_size=BATCH)
    names = model_input_names(spec, "user") + model_input_names(spec, "item") + [transformed_name(spec.item_id)]

    def fresh_trainer():
        sizes = {g: vocab_size_with_reserved(tft_output, g, 1) for g in spec.vocab_groups()}
        t = TwoTowerTrainer(build_towers(spec, sizes, item_vectors.load_table(prepared), cfg), spec, cfg)
        t.compile(optimizer=make_optimizer(cfg))
        return t

    transformed = transformed_dataset(a.workdir, tft_output, spec, names)
    batches = list(transformed.take(20))
    features = {k: tf.concat([b[0][k] for b in batches], 0) for k in names}
    labels = tf.concat([b[1] for b in batches], 0)
    in_memory = tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH).cache().repeat()
    inputs = {"in_memory": in_memory, "transformed": transformed.prefetch(tf.data.AUTOTUNE),
              "raw_tsv": raw_tsv_dataset(a.train, tft_output, spec, os.path.join(prepared, "item_ids.txt"))}
    rates = {name: measure(fresh_trainer(), ds, a.steps) for name, ds in inputs.items()}
    print(f"\n{'input':<12}{'examples/s':>12}{'x ceiling':>11}{'x raw_tsv':>11}")
    for name, r in rates.items():
        print(f"{name:<12}{r:>12.0f}{r / rates['in_memory']:>11.2f}{r / rates['raw_tsv']:>11.2f}")


if __name__ == "__main__":
    main()
