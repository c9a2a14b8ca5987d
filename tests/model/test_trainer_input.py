"""The Trainer's input (model/trainer_input.py) on hand-written transformed tf.Examples: the size
worked out up front, the split held in memory or streamed by the budget, and every pass in memory a
permutation of exactly the rows in the files."""
import os

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
tf = pytest.importorskip("tensorflow")

from model.trainer_input import input_names, split_bytes, split_input  # noqa: E402
from schema.spec import load_spec, transformed_name  # noqa: E402

SPEC = load_spec()
ROWS = 37


def transformed_feature_spec(spec=SPEC):
    """What Transform's outputs look like, written out from the spec (not from the code under test)."""
    out = {spec.label: tf.io.FixedLenFeature([], tf.int64),
           spec.item_index: tf.io.FixedLenFeature([], tf.int64)}
    for f in spec.features:
        shape = [f.maxlen] if f.is_list else []
        out[transformed_name(f.name)] = tf.io.FixedLenFeature(shape, tf.int64)
        if f.weight_name:
            out[transformed_name(f.weight_name)] = tf.io.FixedLenFeature(shape, tf.float32)
    return out


def row_values(row: int, name: str, feature) -> list:
    """Row `row`'s values of one feature: every value names its row, so a row can be told from its values."""
    n = int(np.prod(feature.shape)) if feature.shape else 1
    if feature.dtype == tf.float32:
        return [row + k / 100 for k in range(n)]
    return [row * 1000 + k for k in range(n)] if name != SPEC.label else [row % 2]


def write_split(path: str, feature_spec: dict) -> None:
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in range(ROWS):
            features = {}
            for name, feature in feature_spec.items():
                values = row_values(row, name, feature)
                features[name] = (tf.train.Feature(float_list=tf.train.FloatList(value=values))
                                  if feature.dtype == tf.float32 else
                                  tf.train.Feature(int64_list=tf.train.Int64List(value=values)))
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    feature_spec = transformed_feature_spec()
    path = str(tmp_path_factory.mktemp("split") / "part-0.gz")
    write_split(path, feature_spec)
    return [path], feature_spec, SPEC


def label_key():
    return SPEC.label  # Transform passes the label through under its own name


def rows_of(batch_features) -> np.ndarray:
    """The row each batch row came from, read off the item index (row * 1000)."""
    return batch_features[SPEC.item_index].numpy().reshape(-1) // 1000


def test_the_size_is_rows_times_the_bytes_of_one_row():
    feature_spec = transformed_feature_spec()
    names = input_names(SPEC)
    # by hand from the bundled spec: ids are int64 (8 bytes), weights float32 (4 bytes)
    per_row = 0
    for f in SPEC.features:
        n = f.maxlen if f.is_list else 1
        per_row += 8 * n + (4 * n if f.weight_name else 0)
    per_row += 8  # the item index
    assert split_bytes(feature_spec, names, 1000) == per_row * 1000
    varlen = dict(feature_spec, **{names[0]: tf.io.VarLenFeature(tf.int64)})
    assert split_bytes(varlen, names, 1000) is None


def _split_input(split, budget, shuffle=True, epochs=None, batch=8, rows=ROWS):
    files, feature_spec, spec = split
    return split_input(files, feature_spec, spec, rows, budget, batch, 7, shuffle, epochs)


def test_a_split_that_fits_is_held_in_memory_and_each_pass_is_a_permutation_of_its_rows(split):
    got = _split_input(split, budget=1 << 30, epochs=None, batch=8)
    assert got.source == "memory" and got.rows == ROWS and "fits in trainer.cache_max_mb" in got.reason
    seen = np.concatenate([rows_of(x) for x, _ in got.dataset.take(ROWS * 3 // 8 + 1)])[: ROWS * 3]
    passes = seen.reshape(3, ROWS)
    for p in passes:
        assert sorted(p) == list(range(ROWS))
    assert not np.array_equal(passes[0], passes[1])  # reshuffled every pass
    # every feature of a gathered row is that row's (the gather keeps rows together), labels too
    x, y = next(iter(got.dataset))
    for name, feature in transformed_feature_spec().items():
        if name == label_key():
            continue
        for i, row in enumerate(rows_of(x)):
            np.testing.assert_allclose(np.reshape(x[name][i].numpy(), -1), row_values(row, name, feature), rtol=1e-6)
    np.testing.assert_array_equal(np.reshape(y.numpy(), -1), rows_of(x) % 2)


def canonical_rows() -> list[int]:
    """The rows sorted by blake2b-128 of their values as little-endian bytes (the trainer's input
    features by name, then the label), worked out with struct from the values written."""
    import hashlib
    import struct

    feature_spec = transformed_feature_spec()

    def digest(row):
        data = b""
        for name in [*sorted(input_names(SPEC)), label_key()]:
            values = row_values(row, name, feature_spec[name])
            data += struct.pack(f"<{len(values)}{'f' if feature_spec[name].dtype == tf.float32 else 'q'}", *values)
        return hashlib.blake2b(data, digest_size=16).digest()

    return sorted(range(ROWS), key=digest)


def test_one_unshuffled_pass_in_memory_is_the_rows_in_the_order_of_their_hashes(split):
    got = _split_input(split, budget=1 << 30, shuffle=False, epochs=1, batch=10)
    sizes = [int(np.size(y)) for _, y in got.dataset]
    assert sizes == [10, 10, 10, 7]
    rows = list(np.concatenate([rows_of(x) for x, _ in got.dataset]))
    assert rows == canonical_rows() != list(range(ROWS))


def test_the_same_rows_in_another_order_give_the_same_batches(split, tmp_path):
    """ExampleGen writes rows in the runner's order; the batches (so the model) must not depend on it."""
    files, feature_spec, spec = split
    reversed_file = str(tmp_path / "part-0.gz")
    with tf.io.TFRecordWriter(reversed_file, options="GZIP") as writer:
        for record in reversed(list(tf.data.TFRecordDataset(files, compression_type="GZIP"))):
            writer.write(record.numpy())
    batches = [[rows_of(x).tolist() for x, _ in _split_input(s, budget=1 << 30, epochs=None, batch=8).dataset.take(10)]
               for s in (split, ([reversed_file], feature_spec, spec))]
    assert batches[0] == batches[1]


def test_a_split_over_the_budget_streams_from_its_files_with_the_same_rows(split):
    _, feature_spec, _ = split
    size = split_bytes(feature_spec, input_names(SPEC) + [label_key()], ROWS)
    got = _split_input(split, budget=size - 1, shuffle=False, epochs=1, batch=10)
    assert got.source == "files" and "over trainer.cache_max_mb" in got.reason and got.bytes == size
    assert sorted(np.concatenate([rows_of(x) for x, _ in got.dataset])) == list(range(ROWS))
    assert _split_input(split, budget=size).source == "memory"  # the budget is inclusive


def test_streamed_passes_are_reshuffled_permutations_too(split):
    files, feature_spec, _ = split
    got = _split_input(split, budget=0, shuffle=True, epochs=None, batch=ROWS)
    assert got.source == "files"
    first, second = (rows_of(x) for x, _ in got.dataset.take(2))
    assert sorted(first) == sorted(second) == list(range(ROWS)) and not np.array_equal(first, second)


def test_rows_that_changed_since_they_were_counted_are_an_error(split):
    with pytest.raises(RuntimeError, match=f"held {ROWS + 1:,} rows when counted and {ROWS:,} when read"):
        _split_input(split, budget=1 << 30, rows=ROWS + 1)


def test_progress_counts_every_step_when_steps_run_several_per_call():
    """With steps_per_execution 4 the callbacks see every 4th step (and the epoch's last); the counts
    must still be the steps trained: 2 epochs x 10 steps = 20, and 3 epochs x 250 = 750 for the curve."""
    from model.callbacks import ProgressAndCurve, StopOnNonFinite

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    progress, guard = ProgressAndCurve(total_steps=20), StopOnNonFinite(weights_every=7)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    model.fit(data, epochs=2, steps_per_epoch=10, verbose=0, callbacks=[progress, guard])
    assert progress.steps == 20 and guard.steps == 20 and int(model.optimizer.iterations.numpy()) == 20
    assert progress.curve[-1]["step"] == 20
    steps = [p["step"] for p in progress.curve]
    assert steps == sorted(set(steps))

    long = ProgressAndCurve(total_steps=750)  # a point every 7 steps: one per call that crosses a multiple
    model.fit(data, epochs=3, steps_per_epoch=250, verbose=0, callbacks=[long])
    assert long.steps == 750 and long.curve[-1]["step"] == 750
    assert len(long.curve) == len({p["step"] // long.every for p in long.curve})
    assert len(long.curve) >= 750 // long.every - 1


def test_the_last_short_epoch_of_early_stopping_ends_at_the_end_of_a_call():
    """16 steps with a validation every 250: the one epoch runs out of data after 16 steps, so the
    steps per call must divide 16 (with 10, Keras trained 16 steps and counted 10)."""
    from model.config import TrainerConfig
    from model.trainer import steps_per_execution

    every_250 = TrainerConfig(eval_every_steps=250)
    assert steps_per_execution(every_250, 16) == 2          # gcd(10, 16)
    assert steps_per_execution(every_250, 3000) == 10       # 12 whole epochs of 250
    assert steps_per_execution(every_250, 300) == 10        # last epoch 50 steps: 10 divides it
    assert steps_per_execution(every_250, 1003) == 1        # last epoch 3 steps
    with pytest.raises(ValueError, match="needs the eval interval in use"):
        steps_per_execution(TrainerConfig(), 16)  # eval_every_steps 0 is resolved by eval_interval first
    assert steps_per_execution(TrainerConfig(early_stopping=False), 16) == 10  # Keras truncates a known epoch
    assert steps_per_execution(TrainerConfig(epochs=2), 16) == 10


@pytest.mark.parametrize("settings, rows, expected", [
    # early stopping on train_steps: epochs of eval_every_steps, the last one cut at train_steps
    ({"train_steps": 3000, "eval_every_steps": 250}, 8000, (12, 250, None)),   # 3000 / 250 = 12 whole
    ({"train_steps": 1003, "eval_every_steps": 250}, 8000, (5, 250, 1003)),    # ceil(1003 / 250) = 5, cut
    ({"train_steps": 16, "eval_every_steps": 250}, 8000, (1, 250, 16)),        # one short epoch
    # without early stopping: one epoch of every step
    ({"train_steps": 700, "early_stopping": False}, 8000, (1, 700, None)),
    # epochs: with early stopping one Keras epoch per pass of ceil(rows / batch) steps; without, one
    # epoch of all the passes' steps
    ({"epochs": 3, "batch_size": 128}, 8000, (3, 63, None)),                   # ceil(8000 / 128) = 63
    ({"epochs": 3, "batch_size": 128, "early_stopping": False}, 8000, (1, 188, None)),  # ceil(24000 / 128)
    ({"epochs": 2, "batch_size": 128}, 50, (2, 1, None)),                       # at least one step
])
def test_the_epoch_schedule_by_hand(settings, rows, expected):
    from model.config import TrainerConfig
    from model.trainer import epoch_schedule

    assert epoch_schedule(TrainerConfig(**settings), rows) == expected


def _spec_with_item_ids():
    """The default spec plus a trainable embedding of the item id in the item tower: its transformed
    feature is the item index itself (the bench's item_ids configuration)."""
    d = SPEC.to_dict()
    d["features"]["post_id"] = {"kind": "sparse", "tower": "item", "embed_dim": 4}
    d["columns"] = list(d["columns"])
    from schema.spec import FeatureSpec
    return FeatureSpec.from_dict(d)


def test_an_item_tower_that_embeds_the_item_id_reads_its_own_column_in_step(tmp_path, monkeypatch):
    # Several read batches: a column read twice per batch would fall out of step with the other rows.
    monkeypatch.setattr("model.trainer_input.READ_BATCH", 8)
    spec = _spec_with_item_ids()
    names = input_names(spec)
    assert len(names) == len(set(names)) and {"post_id_xf", spec.item_index} <= set(names)
    feature_spec = transformed_feature_spec(spec)
    path = str(tmp_path / "part-0.gz")
    write_split(path, feature_spec)
    got = split_input([path], feature_spec, spec, ROWS, 1 << 30, 10, 7, False, 1)
    assert got.bytes == split_bytes(feature_spec, list(feature_spec), ROWS)  # each column counted once
    for x, y in got.dataset:
        for name, feature in feature_spec.items():
            if name != label_key():
                for i, row in enumerate(rows_of(x)):
                    np.testing.assert_allclose(np.reshape(x[name][i].numpy(), -1), row_values(row, name, feature))
        np.testing.assert_array_equal(np.reshape(y.numpy(), -1), rows_of(x) % 2)


def test_the_catalog_is_one_row_per_distinct_item_with_its_item_features(tmp_path, monkeypatch):
    from model.trainer_input import item_catalog

    monkeypatch.setattr("model.trainer_input.READ_BATCH", 8)
    feature_spec = transformed_feature_spec()
    item = SPEC.item_index
    item_features = [transformed_name(f.name) for f in SPEC.features if f.tower == "item"]
    path = str(tmp_path / "part-0.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in range(ROWS):  # five items, each clicked by several rows; the item's features follow the item
            post = 3 + row % 5
            values = {name: row_values(row, name, f) for name, f in feature_spec.items()}
            values[item] = [post]
            for name in item_features:
                values[name] = [post * 10 + k for k in range(len(values[name]))]
            features = {name: tf.train.Feature(float_list=tf.train.FloatList(value=v))
                        if feature_spec[name].dtype == tf.float32
                        else tf.train.Feature(int64_list=tf.train.Int64List(value=v))
                        for name, v in values.items()}
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    catalog = item_catalog([path], feature_spec, SPEC)
    assert sorted(catalog) == sorted({item, *item_features})
    np.testing.assert_array_equal(catalog[item], [3, 4, 5, 6, 7])
    for name in item_features:
        np.testing.assert_array_equal(np.reshape(catalog[name], (5, -1))[:, 0], [30, 40, 50, 60, 70])
