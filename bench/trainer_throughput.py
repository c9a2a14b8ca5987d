"""Trainer throughput (examples/s) of one model from four inputs, at each batch size, in one run; and a
profile of where the streamed input path spends its time.

    .venv/bin/python bench/trainer_throughput.py --workdir RUN_DIR --train TSV [--batches 1024,128]
        [--steps 60] [--rounds 3] [--steps-per-execution 10] [--no-raw-tsv]

RUN_DIR is a finished pipeline run (run_pipeline.py local) on TSV; the bench reads its Transform
output and prepared item vectors. The inputs:
  in_memory  40 batches held as tensors, one dataset element per batch (the compute ceiling)
  memory     the Trainer's path when the split fits in trainer.cache_max_mb: read once, then row
             indices shuffled each pass and whole batches gathered (model/trainer_input.py)
  files      the Trainer's path otherwise: tf.data reads and gunzips the files every pass, shuffles
             the records and parses a batch at a time (tf.io.parse_example)
  tfxio      the Trainer's path before: TFXIO's TensorFlowDataset (the data accessor) on the files
  raw_tsv    the original design's input path: tf.data parses every raw TSV line at every step
             (decode_csv, string splits, vocabulary lookups, padding)
The profile times each input alone (no training): read + gunzip; + shuffle, batch parse (files);
TFXIO; the in-memory gather.
"""
import argparse
import glob
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from model.config import TrainerConfig  # noqa: E402
from model.preprocessing import vocab_size_with_reserved  # noqa: E402
from model.towers import TwoTowerTrainer, build_towers, make_optimizer  # noqa: E402
from model.trainer import count_records, item_log_q_of  # noqa: E402
from model.trainer_input import (  # noqa: E402
    in_memory_batches,
    input_names,
    item_catalog,
    read_whole_split,
    record_batches,
    split_input,
)
from schema import item_vectors  # noqa: E402
from schema.spec import load_spec, transformed_name, vocab_name  # noqa: E402


def _latest(pattern: str) -> str:
    return max(glob.glob(pattern), key=lambda p: int(p.rstrip("/").split("/")[-1]))


def raw_tsv_dataset(path, tft_output, spec, ids_path, batch):
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
        out[spec.item_index] = tf.constant(1, tf.int64)
        return out, fields[spec.label]

    ds = tf.data.TextLineDataset(path).skip(1).repeat().shuffle(batch * 2)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


def measure(trainer, iterator, steps: int, batch: int) -> float:
    """examples/s of `steps` training steps, reading from an iterator that outlives the fit calls."""
    start = time.perf_counter()
    trainer.fit(iterator, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def measure_rounds(make_trainer, inputs: dict, steps: int, batch: int, rounds: int) -> dict:
    """The median over `rounds` of each input's rate, the inputs taking turns in every round (so
    that a noisy moment of the machine hits them alike). One trainer and one iterator per input,
    warmed up first (tracing, first reads, shuffle buffers)."""
    trainers = {name: make_trainer() for name in inputs}
    iterators = {name: iter(ds) for name, ds in inputs.items()}
    for name in inputs:
        trainers[name].fit(iterators[name], epochs=1, steps_per_epoch=5, verbose=0)
    rates = {name: [] for name in inputs}
    for _ in range(rounds):
        for name in inputs:
            rates[name].append(measure(trainers[name], iterators[name], steps, batch))
    return {name: float(np.median(r)) for name, r in rates.items()}


def rate_alone(ds, batches: int, batch: int) -> float:
    """examples/s of iterating a dataset alone (no training)."""
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def tfxio_batches(files, tft_output, names, label, batch):
    """The Trainer's input before: TFXIO's TensorFlowDataset, as the TFX data accessor builds it."""
    source = tfxio.TFExampleRecord(files, schema=tft_output.transformed_metadata.schema)
    return source.TensorFlowDataset(tfxio.TensorFlowDatasetOptions(
        batch_size=batch, label_key=label, shuffle=True, num_epochs=None)).map(
        lambda x, y: ({k: x[k] for k in names}, y)).prefetch(tf.data.AUTOTUNE)


def profile(files, feature_spec, tft_output, names, label, batch, batches):
    """examples/s of each input alone."""
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(files), compression_type="GZIP").repeat()
    features, labels = read_whole_split(files, feature_spec, names, label)
    stages = {
        "read + gunzip": records.batch(batch),
        "+ shuffle, batch parse (files)": record_batches(files, feature_spec, names, label, batch, 1, True, None),
        "TFXIO": tfxio_batches(files, tft_output, names, label, batch),
        "in-memory gather (memory)": in_memory_batches(features, labels, batch, 1, True, None),
    }
    return {name: rate_alone(ds, batches, batch) for name, ds in stages.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batches", default=f"1024,{TrainerConfig().batch_size}")
    p.add_argument("--steps-per-execution", type=int, default=TrainerConfig().steps_per_execution)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-raw-tsv", action="store_true")
    a = p.parse_args()
    spec = load_spec()
    graph = _latest(os.path.join(a.workdir, "pipeline", "Transform", "transform_graph", "*"))
    tft_output = tft.TFTransformOutput(graph)
    feature_spec = tft_output.transformed_feature_spec()
    examples = _latest(os.path.join(a.workdir, "pipeline", "Transform", "transformed_examples", "*"))
    files = os.path.join(examples, "Split-train", "*")
    rows = count_records(files)
    prepared = glob.glob(os.path.join(a.workdir, "item_vectors", "*"))[0]
    names = input_names(spec)
    # The default model as the Trainer builds it: the click counts' sampling correction and, with
    # trainer.uniform_negatives, the training split's catalog to draw negatives from.
    log_q = item_log_q_of(tft_output)
    catalog = item_catalog([files], feature_spec, spec) if TrainerConfig().uniform_negatives else None
    print(f"{rows:,} training rows; steps_per_execution {a.steps_per_execution}; {os.cpu_count()} CPUs; "
          f"default model ({TrainerConfig().loss} loss, {TrainerConfig().uniform_negatives} uniform negatives)")

    for batch in (int(b) for b in a.batches.split(",")):
        cfg = TrainerConfig(batch_size=batch, steps_per_execution=a.steps_per_execution)

        def fresh_trainer(cfg=cfg):
            sizes = {g: vocab_size_with_reserved(tft_output, g, 1) for g in spec.vocab_groups()}
            t = TwoTowerTrainer(build_towers(spec, sizes, item_vectors.load_table(prepared), cfg), spec, cfg,
                                log_q, catalog)
            t.compile(optimizer=make_optimizer(cfg), steps_per_execution=cfg.steps_per_execution)
            return t

        steps = max(a.steps, a.steps * 1024 // batch // 2)
        streamed = record_batches(files, feature_spec, names, spec.label, batch, 1, True, None)
        held = list(streamed.take(40))  # whole batches, stacked: one dataset element is one batch
        ceiling = tf.data.Dataset.from_tensor_slices(
            ({k: tf.stack([b[0][k] for b in held]) for k in names}, tf.stack([b[1] for b in held]))
        ).repeat().prefetch(tf.data.AUTOTUNE)
        memory = split_input(files, feature_spec, spec, rows, 1 << 40, batch, 1, True, None)
        inputs = {"in_memory": ceiling, "memory": memory.dataset, "files": streamed,
                  "tfxio": tfxio_batches(files, tft_output, names, spec.label, batch)}
        if not a.no_raw_tsv:
            inputs["raw_tsv"] = raw_tsv_dataset(a.train, tft_output, spec, os.path.join(prepared, "item_ids.txt"),
                                                batch)
        rates = measure_rounds(fresh_trainer, inputs, steps, batch, a.rounds)
        print(f"\nbatch {batch}, {steps} steps, median of {a.rounds} rounds: training examples/s")
        print(f"{'input':<12}{'examples/s':>12}{'x ceiling':>11}")
        for name, r in rates.items():
            print(f"{name:<12}{r:>12.0f}{r / rates['in_memory']:>11.2f}")
        print(f"batch {batch}: the input alone, examples/s")
        for stage, r in profile(files, feature_spec, tft_output, names, spec.label, batch, steps).items():
            print(f"  {stage:<38}{r:>12.0f}")


if __name__ == "__main__":
    main()
