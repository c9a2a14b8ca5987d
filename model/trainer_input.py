"""The Trainer's input: a transformed split as (model inputs + item index, label) batches.

A split whose tensors fit in `trainer.cache_max_mb` is read once and held in memory, its rows sorted
by a hash of their values (the same rows train the same model in whatever order the runner wrote
them); each pass then shuffles row indices and gathers whole batches, so no pass re-reads,
decompresses or parses the files. A larger split streams from its files on every pass (in the
files' order, shuffled in a buffer). The size is worked out before anything is read: rows x the
bytes of one row's fixed-length transformed features.

Files are read with tf.data and parsed a whole batch at a time with tf.io.parse_example against
Transform's feature spec. Unshuffled (the read into memory) that is about twice TFXIO's
TensorFlowDataset rate on the same files; shuffled (streaming) the record shuffle buffer costs as
much as TFXIO's does, and the two run at the same rate (bench/trainer_throughput.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model.towers import transformed_input_names
from schema.spec import FeatureSpec

READ_BATCH = 16384       # rows per batch while a split is read into memory
SHUFFLE_RECORDS = 16384  # streamed: serialized records shuffled in a buffer this big (files are shuffled too)


def input_names(spec: FeatureSpec) -> list[str]:
    """The transformed features the trainer uses, each once: both towers' inputs, the item index
    (in-batch losses; also a tower input when the item tower embeds the item id) and the sample weight
    when the spec has one. Other transformed features (the OOV counts) are left out."""
    return list(dict.fromkeys(transformed_input_names(spec, "user") + transformed_input_names(spec, "item")
                              + [spec.item_index] + ([spec.weight] if spec.weight else [])))


def split_bytes(feature_spec: dict, names: list[str], rows: int) -> int | None:
    """Bytes the split's `names` take as dense tensors, or None when one of them has no fixed length."""
    per_row = 0
    for name in names:
        feature = feature_spec[name]
        if not isinstance(feature, tf.io.FixedLenFeature):
            return None
        per_row += int(np.prod(feature.shape, dtype=np.int64)) * feature.dtype.size
    return per_row * rows


def record_batches(files: str | list[str], feature_spec: dict, names: list[str], label: str, batch_size: int, seed: int,
                   shuffle: bool, epochs: int | None) -> tf.data.Dataset:
    """(features, label) batches parsed from the split's gzipped TFRecord files; forever when epochs
    is None. Shuffled: file order every pass, and records in a SHUFFLE_RECORDS buffer."""
    patterns = [files] if isinstance(files, str) else files
    paths = sorted(p for pattern in patterns for p in tf.io.gfile.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no files match {files}")
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
                       cycle_length=min(len(paths), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_RECORDS, seed=seed, reshuffle_each_iteration=True)
    wanted = {name: feature_spec[name] for name in [*names, label]}

    def parse(records):
        x = tf.io.parse_example(records, wanted)
        return {name: x[name] for name in names}, x[label]

    return (ds.repeat(epochs).batch(batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))


def read_whole_split(files: list[str], feature_spec: dict, names: list[str],
                     label: str) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Every row of the split, in file order, as one tensor per feature and one for the label."""
    if len(set(names)) != len(names):  # a name twice would read its column twice, out of step with the rows
        raise ValueError(f"feature names repeat: {names}")
    parts: dict[str, list[tf.Tensor]] = {name: [] for name in names}
    labels = []
    for x, y in record_batches(files, feature_spec, names, label, READ_BATCH, 0, False, 1):
        for name in names:
            parts[name].append(x[name])
        labels.append(y)
    return {name: tf.concat(p, 0) for name, p in parts.items()}, tf.concat(labels, 0)


def canonical_order(features: dict[str, tf.Tensor], labels: tf.Tensor, chunk: int = 65536) -> np.ndarray:
    """The permutation that sorts the rows by a 128-bit hash of their values (every feature in name
    order, then the label). ExampleGen writes rows in the runner's order (its shuffle; a distributed
    runner's shards come in any order); sorted this way the same rows give the same batches, so the
    same model, whatever that order was. Identical rows tie, and their order does not matter."""
    rows = int(labels.shape[0])
    columns = [features[name] for name in sorted(features)] + [labels]
    digests = bytearray()
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        block = np.concatenate([np.ascontiguousarray(c[start:stop].numpy()).reshape(stop - start, -1).view(np.uint8)
                                for c in columns], axis=1)
        for row in block:
            digests += hashlib.blake2b(row.tobytes(), digest_size=16).digest()
    keys = np.frombuffer(bytes(digests), dtype="V16")
    return np.argsort(keys, kind="stable")


def in_memory_batches(features: dict[str, tf.Tensor], labels: tf.Tensor, batch_size: int, seed: int,
                      shuffle: bool, epochs: int | None) -> tf.data.Dataset:
    """Batches gathered from tensors held in memory; rows reshuffled every pass; forever when epochs
    is None. A batch may span two passes, as TFXIO's do."""
    rows = int(labels.shape[0])
    indices = tf.data.Dataset.range(rows)
    if shuffle:
        indices = indices.shuffle(rows, seed=seed, reshuffle_each_iteration=True)

    def gather(i):
        return {name: tf.gather(t, i) for name, t in features.items()}, tf.gather(labels, i)

    return (indices.repeat(epochs).batch(batch_size)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE))


def item_catalog(files: list[str], feature_spec: dict, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """The split's distinct items (by item index, in index order): the item tower's inputs and the
    item index, one row per item, as the uniform negatives' catalog. A pass over the split's files
    that parses only these columns."""
    names = list(dict.fromkeys(transformed_input_names(spec, "item") + [spec.item_index]))
    features, _ = read_whole_split(files, feature_spec, names, spec.label)
    index = features[spec.item_index].numpy().reshape(-1)
    _, first = np.unique(index, return_index=True)
    return {name: t.numpy()[first] for name, t in features.items()}


@dataclass
class SplitInput:
    dataset: tf.data.Dataset
    source: str          # "memory" or "files"
    rows: int
    bytes: int | None    # the split's size as dense tensors; None when not fixed-length
    reason: str          # why it is held in memory or streamed


def split_input(files: list[str], feature_spec: dict, spec: FeatureSpec, rows: int, budget_bytes: int,
                batch_size: int, seed: int, shuffle: bool, epochs: int | None) -> SplitInput:
    """The split in memory when it fits in budget_bytes, else streamed from its files."""
    names = input_names(spec)
    size = split_bytes(feature_spec, names + [spec.label], rows)
    streamed = None
    if size is None or rows == 0:
        streamed = "no rows" if rows == 0 else "a feature has no fixed length"
    elif size > budget_bytes:
        streamed = f"{size / 2**20:,.0f} MB is over trainer.cache_max_mb ({budget_bytes / 2**20:,.0f} MB)"
    if streamed:
        return SplitInput(record_batches(files, feature_spec, names, spec.label, batch_size, seed, shuffle, epochs),
                          "files", rows, size, streamed)
    features, labels = read_whole_split(files, feature_spec, names, spec.label)
    if int(labels.shape[0]) != rows:  # the files changed between counting and reading
        raise RuntimeError(f"the split held {rows:,} rows when counted and {int(labels.shape[0]):,} when read")
    order = canonical_order(features, labels)
    features, labels = {name: tf.gather(t, order) for name, t in features.items()}, tf.gather(labels, order)
    return SplitInput(in_memory_batches(features, labels, batch_size, seed, shuffle, epochs), "memory", rows, size,
                      f"{size / 2**20:,.1f} MB fits in trainer.cache_max_mb ({budget_bytes / 2**20:,.0f} MB)")
