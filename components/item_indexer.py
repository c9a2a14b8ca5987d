"""ItemIndexer: the blessed model's item tower over the item catalog, into Milvus behind an alias.

A Beam pipeline (so it runs on the same runner as ExampleGen and Transform) builds the catalog and
embeds it:
  - the catalog: the item-vector file's ids (or the items seen in the logs, evaluation.catalog),
  - each item's single-valued item-tower features (topic_id) from the logs: the most frequent value
    across both splits (an item never logged gets none: the model's OOV row),
  - item_embedding of the blessed SavedModel on a tf.Example per item, in batches,
  - written as tf.Examples (id, features, embedding) to <artifact>/embeddings/*.tfrecord.gz.
The executor then streams those shards into a new Milvus generation and moves the alias
(retrieval/milvus.py). Nothing is indexed for a model that was not blessed (model and infra).
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

from common import signature_names
from common.outputs import OutputReport
from components.artifacts import ItemIndex, ItemVectors
from schema.item_vectors import IDS_FILE
from schema.spec import STRING, FeatureSpec

EMBEDDINGS_DIR = "embeddings"
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


class _EmbedItems(beam.DoFn):
    """Batches of (item, {column: value}) -> serialized tf.Examples with the item-tower vector."""

    def __init__(self, model_dir: str, spec_json: str):
        self._model_dir, self._spec_json = model_dir, spec_json

    def setup(self):
        from serving.examples import ExampleBuilder

        spec = FeatureSpec.from_json(self._spec_json)
        self._id = spec.item_id
        self._builder = ExampleBuilder(spec)
        self._embed = tf.saved_model.load(self._model_dir).signatures[signature_names.ITEM]

    def process(self, batch):
        examples = [self._builder.from_features({self._id: item, **values}) for item, values in batch]
        vectors = self._embed(examples=tf.constant(examples))["embedding"].numpy()
        for (item, values), vector in zip(batch, vectors, strict=True):
            out = tf.train.Example()
            out.features.feature[self._id].bytes_list.value.append(item.encode())
            for c, v in values.items():
                out.features.feature[c].bytes_list.value.append(v.encode())
            out.features.feature[EMBEDDING_FEATURE].float_list.value.extend(vector.tolist())
            yield out.SerializeToString()


def embed_catalog(pipeline: beam.Pipeline, examples, item_vectors, catalog_source: str, model_dir: str,
                  spec: FeatureSpec, out_prefix: str):
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
    if catalog_source == "vectors":
        catalog = (pipeline
                   | "ReadIds" >> beam.io.ReadFromText(os.path.join(item_vectors.uri, IDS_FILE))
                   | "Key" >> beam.Map(lambda i: (i, None)))
        items = (({"catalog": catalog, "logged": logged})
                 | "Join" >> beam.CoGroupByKey()
                 | "InCatalog" >> beam.FlatMap(lambda kv: [(kv[0], (kv[1]["logged"] or [{}])[0])]
                                               if kv[1]["catalog"] else []))
    else:
        items = logged
    return (items
            | "Batch" >> beam.BatchElements(min_batch_size=BATCH, max_batch_size=BATCH)
            | "Embed" >> beam.ParDo(_EmbedItems(model_dir, spec.to_json()))
            | "Write" >> beam.io.WriteToTFRecord(out_prefix, file_name_suffix=".tfrecord.gz"))


def read_embeddings(pattern: str, spec: FeatureSpec, dim: int, batch: int = 4096):
    """Streams the written shards as retrieval.milvus.Batch objects (never the whole catalog)."""
    from retrieval.milvus import Batch

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


def _embedding_size(pattern: str) -> int:
    """The item vectors' size, from the first written record."""
    files = sorted(tf.io.gfile.glob(pattern))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1):
        return len(tf.train.Example.FromString(record.numpy()).features.feature[EMBEDDING_FEATURE].float_list.value)
    raise RuntimeError(f"the item tower wrote no vectors ({pattern}): the catalog is empty")


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
        from retrieval.backends import open_index
        from retrieval.milvus import IndexConfig

        index = artifact_utils.get_single_instance(output_dict["index"])
        not_blessed = _blessed(input_dict)
        if not_blessed:
            index.set_int_custom_property("indexed", 0)
            index.set_string_custom_property("not_indexed_because", "; ".join(not_blessed))
            return
        spec = FeatureSpec.from_json(exec_properties["feature_spec"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        item_vectors = artifact_utils.get_single_instance(input_dict["item_vectors"])
        out_dir = os.path.join(index.uri, EMBEDDINGS_DIR)
        with self._make_beam_pipeline() as pipeline:
            embed_catalog(pipeline, examples, item_vectors, exec_properties["catalog_source"], model_dir, spec,
                          os.path.join(out_dir, "part"))
        pattern = os.path.join(out_dir, "part*")
        dim = _embedding_size(pattern)
        config = IndexConfig(**json.loads(exec_properties["index_config"]))
        catalog_size = item_vectors.get_int_custom_property("count") if exec_properties["catalog_source"] == "vectors" \
            else None
        with open_index(config) as item_index:
            result = item_index.write_generation(read_embeddings(pattern, spec, dim), spec.item_id,
                                                 item_scalar_columns(spec), dim, expected_count=catalog_size or None,
                                                 model_version=_pushed_version(input_dict))
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
                 catalog_source: str = "vectors", model_blessing=None, infra_blessing=None, code_fingerprint: str = "",
                 pushed_model=None):
        super().__init__(ItemIndexerSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing, pushed_model=pushed_model,
            examples=examples,
            item_vectors=item_vectors, feature_spec=feature_spec, index_config=json.dumps(index_config, sort_keys=True),
            catalog_source=catalog_source, code_fingerprint=code_fingerprint,
            index=types.Channel(type=ItemIndex)))
