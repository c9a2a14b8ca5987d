"""ItemIndexer: the item store seeded from the run, then every stored post through the blessed model's
item tower into a new Milvus generation behind the alias.

1. A Beam pipeline (the runner of ExampleGen and Transform) finds each catalog item's single-valued
   item-tower features (topic_id) in the logs: the most frequent value across both splits (an item
   never logged gets none). The catalog: the item-vector file's ids, or the logged items that have a
   vector (evaluation.catalog: logs). Written as tf.Examples to <artifact>/features/*.tfrecord.gz.
2. The item store (retrieval/item_store.py) is seeded with those posts: id, features and the run's
   content vector (an id already there is replaced: the run's file is the newer truth).
3. Every post of the store, the seeded ones and those added since by retrieval.add_items, is embedded
   by the pushed version's item tower (content by value) and written to a new generation; the alias
   moves; then the posts the store got while the generation was written are added to it too.
Nothing is indexed for a model that was not blessed (model and infra).
"""
from __future__ import annotations

import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import path_utils

from common.outputs import OutputReport
from common.progress import log
from components.artifacts import ItemIndex, ItemVectors
from schema.item_vectors import IDS_FILE, VectorTable
from schema.spec import STRING, FeatureSpec

FEATURES_DIR = "features"
EMBEDDINGS_DIR = "embeddings"  # the generation's item-tower vectors (the report's projector reads them)
EMBEDDING_FEATURE = "embedding"
BATCH = 512
OUTPUT_REPORT = OutputReport(
    ItemIndex.TYPE_NAME, "item_index", uri_key="item_index_uri",
    read=lambda a, custom: custom(a, "milvus") or {"not_indexed_because": custom(a, "not_indexed_because")},
    figures=lambda r: (f"{r['count']:,} items in {r['collection']} ({r['items_per_second']:,} items/s)"
                       if "collection" in r else f"not indexed: {r['not_indexed_because']}"))


def item_scalar_columns(spec: FeatureSpec) -> list[str]:
    """The single-valued string columns the item tower reads, besides the item id (stored in Milvus
    next to each vector, for filtering)."""
    columns = []
    for f in spec.tower_features("item"):
        col = spec.raw_columns[f.column]
        if col.name != spec.item_id and col.type == STRING and col.name not in columns:
            columns.append(col.name)
    return columns


def _logged_values(serialized: bytes, item_id: str, columns: list[str]):
    """((item, column, value), 1) for each logged row."""
    features = tf.train.Example.FromString(serialized).features.feature
    item = features[item_id].bytes_list.value[0].decode()
    for c in columns:
        values = features[c].bytes_list.value
        if values:
            yield item, c, values[0].decode()


def _most_frequent(element):
    """(item, [((column, value), count)]) -> (item, {column: most frequent value, ties: smallest})."""
    item, counted = element
    best = {}
    for (column, value), _count in sorted(counted, key=lambda c: (-c[1], c[0][1])):
        best.setdefault(column, value)  # the first per column is the most frequent, then the smallest
    return item, best


def _features_example(element, item_id: str) -> bytes:
    item, values = element
    out = tf.train.Example()
    out.features.feature[item_id].bytes_list.value.append(item.encode())
    for c, v in values.items():
        out.features.feature[c].bytes_list.value.append(v.encode())
    return out.SerializeToString()


def catalog_features(pipeline: beam.Pipeline, examples, item_vectors, catalog_source: str, spec: FeatureSpec,
                     out_prefix: str):
    """Writes (id, the item's most frequent logged features) of every catalog item that has a vector."""
    columns = item_scalar_columns(spec)
    files = [os.path.join(artifact_utils.get_split_uri([examples], s), "*")
             for s in artifact_utils.decode_split_names(examples.split_names)]
    logged = (
        pipeline
        | "LogFiles" >> beam.Create(files)
        | "ReadLogs" >> beam.io.ReadAllFromTFRecord()
        | "ItemValues" >> beam.FlatMap(_logged_values, spec.item_id, columns)
        | "Count" >> beam.combiners.Count.PerElement()
        | "ByItem" >> beam.Map(lambda kv: (kv[0][0], ((kv[0][1], kv[0][2]), kv[1])))
        | "Group" >> beam.GroupByKey()
        | "MostFrequent" >> beam.Map(_most_frequent))
    with_vector = (pipeline
                   | "ReadIds" >> beam.io.ReadFromText(os.path.join(item_vectors.uri, IDS_FILE))
                   | "Key" >> beam.Map(lambda i: (i, None)))
    keep_unlogged = catalog_source == "vectors"  # logs: only the logged items (that have a vector)
    items = (({"vector": with_vector, "logged": logged})
             | "Join" >> beam.CoGroupByKey()
             | "InCatalog" >> beam.FlatMap(lambda kv: [(kv[0], (kv[1]["logged"] or [{}])[0])]
                                           if kv[1]["vector"] and (keep_unlogged or kv[1]["logged"]) else []))
    return (items
            | "Example" >> beam.Map(_features_example, spec.item_id)
            | "Write" >> beam.io.WriteToTFRecord(out_prefix, file_name_suffix=".tfrecord.gz"))


def read_catalog(pattern: str, spec: FeatureSpec, table: VectorTable, batch: int = 4096):
    """The written catalog as Batches of (ids, features, the run's content vectors)."""
    from retrieval.index import Batch

    columns = item_scalar_columns(spec)
    parse = {spec.item_id: tf.io.FixedLenFeature([], tf.string),
             **{c: tf.io.FixedLenFeature([], tf.string, default_value="") for c in columns}}
    files = sorted(tf.io.gfile.glob(pattern))
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
        parsed = tf.io.parse_example(records, parse)
        ids = [i.decode() for i in parsed[spec.item_id].numpy()]
        yield Batch(ids, {c: [v.decode() for v in parsed[c].numpy()] for c in columns}, table.vectors(ids))


class EmbeddingsWriter:
    """Writes each embedded Batch as tf.Examples (id, item columns, embedding) to <dir>/part-*.tfrecord.gz."""

    def __init__(self, folder: str, spec: FeatureSpec, shard_rows: int = 100_000):
        self.folder, self.spec, self.shard_rows = folder, spec, shard_rows
        self.rows, self.writer = 0, None
        tf.io.gfile.makedirs(folder)

    def __call__(self, batch) -> None:
        for i, item in enumerate(batch.ids):
            if self.rows % self.shard_rows == 0:
                self.close()
                self.writer = tf.io.TFRecordWriter(
                    os.path.join(self.folder, f"part-{self.rows // self.shard_rows:05d}.tfrecord.gz"), "GZIP")
            out = tf.train.Example()
            out.features.feature[self.spec.item_id].bytes_list.value.append(item.encode())
            for c, values in batch.scalars.items():
                out.features.feature[c].bytes_list.value.append(values[i].encode())
            out.features.feature[EMBEDDING_FEATURE].float_list.value.extend(batch.vectors[i].tolist())
            self.writer.write(out.SerializeToString())
            self.rows += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_embeddings(pattern: str, spec: FeatureSpec, dim: int, batch: int = 4096):
    """Streams the written shards as retrieval.index.Batch objects (never the whole catalog)."""
    from retrieval.index import Batch

    columns = item_scalar_columns(spec)
    parse = {spec.item_id: tf.io.FixedLenFeature([], tf.string),
             EMBEDDING_FEATURE: tf.io.FixedLenFeature([dim], tf.float32),
             **{c: tf.io.FixedLenFeature([], tf.string, default_value="") for c in columns}}
    files = sorted(tf.io.gfile.glob(pattern))
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
        parsed = tf.io.parse_example(records, parse)
        yield Batch([i.decode() for i in parsed[spec.item_id].numpy()],
                    {c: [v.decode() for v in parsed[c].numpy()] for c in columns},
                    parsed[EMBEDDING_FEATURE].numpy())


def _blessed(input_dict) -> list[str]:
    reasons = []
    for key, check in (("model_blessing", model_utils.is_model_blessed),
                       ("infra_blessing", model_utils.is_infra_validated)):
        for artifact in input_dict.get(key, []):
            if not check(artifact):
                reasons.append(f"{key} says not blessed")
    for pushed in input_dict.get("pushed_model", []):
        if not reasons and not pushed.get_int_custom_property("pushed"):  # blessed, yet not pushed
            reasons.append("the model was not pushed")
    return reasons


def _pushed_version(input_dict) -> int | None:
    """The version TowerPusher pushed this model as: recorded with the generation, so that recall asks
    the model server for exactly that version's user tower."""
    for pushed in input_dict.get("pushed_model", []):
        version = pushed.get_string_custom_property("pushed_version")
        return int(version) if version.isdigit() else None
    return None


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        index = artifact_utils.get_single_instance(output_dict["index"])
        not_blessed = _blessed(input_dict)
        if not_blessed:
            index.set_int_custom_property("indexed", 0)
            index.set_string_custom_property("not_indexed_because", "; ".join(not_blessed))
            return
        from retrieval.backends import open_index
        from retrieval.catalog import ModelVocabulary, index_store
        from retrieval.index import IndexConfig
        from retrieval.item_store import ItemStore, now_ms
        from retrieval.recall import SavedModelTowers
        from serving.examples import ExampleBuilder

        spec = FeatureSpec.from_json(exec_properties["feature_spec"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        item_vectors = artifact_utils.get_single_instance(input_dict["item_vectors"])
        out_dir = os.path.join(index.uri, FEATURES_DIR)
        with self._make_beam_pipeline() as pipeline:
            catalog_features(pipeline, examples, item_vectors, exec_properties["catalog_source"], spec,
                             os.path.join(out_dir, "part"))
        table = VectorTable.load(item_vectors.uri)
        config = IndexConfig(**json.loads(exec_properties["index_config"]))
        version = _pushed_version(input_dict)
        item_tower = SavedModelTowers(model_dir)
        with open_index(config) as item_index:
            store = ItemStore(config, spec.item_id, client=item_index.client)
            columns = item_scalar_columns(spec)
            store.ensure(table.dim, columns)
            seed_ms = now_ms()  # one stamp for the seed: the store is then read for its other posts only
            features = os.path.join(out_dir, "part*")
            seeded = sum(store.upsert(b, added_ms=seed_ms) for b in read_catalog(features, spec, table))
            stored = store.count()
            log(f"item store {store.name}: {seeded:,} posts of this run's vector file written, {stored:,} in all "
                f"(with {stored - seeded:,} added by add_items and earlier runs)")
            kept = EmbeddingsWriter(os.path.join(index.uri, EMBEDDINGS_DIR), spec)
            try:
                result = index_store(item_index, store, item_tower.item, ModelVocabulary(model_dir, spec),
                                     ExampleBuilder(spec, store), spec, version,
                                     seed=read_catalog(features, spec, table), seed_ms=seed_ms, keep=kept)
            finally:
                kept.close()
            if result["added_during_write"]:
                log(f"{result['added_during_write']:,} posts stored while {result['collection']} was written added "
                    "to it")
        result = {**result, "seeded": seeded}
        dim = result["dim"]
        index.set_int_custom_property("indexed", 1)
        index.set_string_custom_property("uri", config.uri)
        index.set_json_value_custom_property("milvus", result)
        index.set_int_custom_property("dim", dim)
        index.set_int_custom_property("count", result["count"])


class ItemIndexerSpec(ComponentSpec):
    PARAMETERS = {"feature_spec": ExecutionParameter(type=str),
                  "index_config": ExecutionParameter(type=str),       # JSON of retrieval.milvus.IndexConfig
                  "catalog_source": ExecutionParameter(type=str),     # vectors | logs
                  "code_fingerprint": ExecutionParameter(type=str, optional=True)}
    INPUTS = {"model": ChannelParameter(type=standard_artifacts.Model),
              "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
              "infra_blessing": ChannelParameter(type=standard_artifacts.InfraBlessing, optional=True),
              # TowerPusher's output: indexing waits for the push and records its version.
              "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel, optional=True),
              "examples": ChannelParameter(type=standard_artifacts.Examples),
              "item_vectors": ChannelParameter(type=ItemVectors)}
    OUTPUTS = {"index": ChannelParameter(type=ItemIndex)}


class ItemIndexer(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = ItemIndexerSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, model, examples, item_vectors, feature_spec: str, index_config: dict,
                 catalog_source: str, model_blessing=None, infra_blessing=None, code_fingerprint: str = "",
                 pushed_model=None):
        super().__init__(ItemIndexerSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing, pushed_model=pushed_model,
            examples=examples,
            item_vectors=item_vectors, feature_spec=feature_spec, index_config=json.dumps(index_config, sort_keys=True),
            catalog_source=catalog_source, code_fingerprint=code_fingerprint,
            index=types.Channel(type=ItemIndex)))
