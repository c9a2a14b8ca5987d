"""create_pipeline(...): the TFX DAG, pure wiring (no I/O, no environment lookups).

The runners (pipeline/local_runner.py, kubeflow_runner.py) compute the paths, validate the inputs and
prepare the item vectors (pipeline/inputs.py); this module only connects components.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2, range_config_pb2

from components.anomaly_gate import AnomalyGate
from components.artifacts import ItemVectors
from components.infra_validator import ServingInfraValidator
from components.item_indexer import ItemIndexer
from components.retrieval_evaluator import RetrievalEvaluator
from components.tower_pusher import TowerPusher
from components.transform import Transform  # TFX's, plus row progress
from components.tsv_example_gen import HASH_INPUT_SPLIT, TRAIN_SPLIT, TsvExampleGen
from components.warm_start_resolver import LatestPushedModelBeforeSpan
from pipeline.config import PipelineConfig
from schema.spec import FeatureSpec

EVAL_SPLIT = "eval"


@dataclass(frozen=True)
class PipelineInputs:
    input_base: str          # folder that the split patterns are relative to
    train_pattern: str | None  # explicit splits (train and eval patterns) ...
    eval_pattern: str | None
    input_pattern: str | None  # ... or one input split by a hash of the user id
    item_vectors_dir: str    # prepared folder (item_ids.txt, vectors.npy)
    item_vectors_dim: int
    item_vectors_count: int
    item_vectors_sha256: str
    feature_spec_json: str
    # sha256 of the project's code: components loaded by import path are not fingerprinted by TFX,
    # so this keys the cache, and changed code re-runs the components that use it.
    code_fingerprint: str = ""
    # {SPAN} patterns: the span to read, and the training window's files with their stamps
    # (schema/spans.py); None / () without spans.
    span: int | None = None
    train_files: tuple = ()


def statistics_options() -> tfdv.StatsOptions:
    """TFDV's options for both StatisticsGens. Sketches (Misra-Gries, KMV) for the top values and the
    unique counts of string features: 2.4x faster at seed scale (28.0 -> 11.7 s), and nothing here
    reads those two (the schema has no string domains; the report and the OOV counts use the exact
    presence and numeric statistics, which do not change). Batches of 4,096 rows: 11.7 -> 9.9 s."""
    return tfdv.StatsOptions(use_sketch_based_topk_uniques=True, desired_batch_size=4096)


def _input_config(inputs: PipelineInputs) -> example_gen_pb2.Input:
    if inputs.input_pattern:
        return example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=HASH_INPUT_SPLIT, pattern=inputs.input_pattern)])
    return example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=TRAIN_SPLIT, pattern=inputs.train_pattern),
        example_gen_pb2.Input.Split(name=EVAL_SPLIT, pattern=inputs.eval_pattern)])


def _output_config(inputs: PipelineInputs, config: PipelineConfig, user_id: str) -> example_gen_pb2.Output | None:
    if not inputs.input_pattern:
        return None  # the output splits are the input splits
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=config.split_buckets[name])
                for name in (TRAIN_SPLIT, EVAL_SPLIT)],
        partition_feature_name=user_id))


def create_pipeline(pipeline_root: str, serving_dir: str, inputs: PipelineInputs, config: PipelineConfig,
                    metadata_connection_config=None, beam_pipeline_args: list[str] | None = None,
                    milvus_uri: str | None = None, trainer_resources=None,
                    no_warm_start_because: str | None = None) -> tfx.dsl.Pipeline:
    """milvus_uri: where ItemIndexer writes (the runner resolves the config's default to a Lite file).
    no_warm_start_because: the runner cannot warm start (Kubeflow: its DAG runner knows TFX's own
    resolver strategies only); the Trainer records this reason."""
    user_id = FeatureSpec.from_json(inputs.feature_spec_json).user_id
    # Logs -> tf.Examples, with bad rows quarantined and counted.
    example_gen = TsvExampleGen(
        input_base=inputs.input_base,
        feature_spec_json=inputs.feature_spec_json,
        input_config=_input_config(inputs),
        output_config=_output_config(inputs, config, user_id),
        max_rejected_fraction=config.max_rejected_fraction,
        item_ids_path=f"{inputs.item_vectors_dir}/item_ids.txt",
        code_fingerprint=inputs.code_fingerprint,
        range_config=None if inputs.span is None else range_config_pb2.RangeConfig(
            static_range=range_config_pb2.StaticRange(start_span_number=inputs.span, end_span_number=inputs.span)),
        train_files=list(inputs.train_files) or None)

    # Statistics of both splits, checked against the curated schema derived from the feature spec.
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"],
                                                  stats_options=statistics_options())
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # ExampleValidator only records anomalies; the gate stops the run before Transform on any.
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])

    # The prepared pretrained vectors, recorded in the metadata store for lineage.
    item_vectors = tfx.dsl.Importer(
        source_uri=inputs.item_vectors_dir, artifact_type=ItemVectors,
        custom_properties={"dim": inputs.item_vectors_dim, "count": inputs.item_vectors_count,
                           "sha256": inputs.item_vectors_sha256}).with_id("item_vectors_importer")

    # Vocabularies (one per share_embed group), padding, weights, post id -> pretrained row.
    # The sha256 keys the cache: new vectors at the same path give a new Transform and Trainer run.
    module_config = {"feature_spec": inputs.feature_spec_json, "num_oov_buckets": config.num_oov_buckets,
                     "item_ids_path": f"{inputs.item_vectors_dir}/item_ids.txt",
                     "item_vectors_dir": inputs.item_vectors_dir,
                     "item_vectors_sha256": inputs.item_vectors_sha256,
                     "code_fingerprint": inputs.code_fingerprint}
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn="model.preprocessing.preprocessing_fn", custom_config=module_config,
        # StatisticsGen and TransformedStatisticsGen compute the statistics; TFDV inside Transform would
        # compute them again (pre and post), in Transform's time and memory.
        disable_statistics=True)
    transform.add_upstream_node(anomaly_gate)

    # Statistics of the transformed splits: padding, id ranges and the OOV counts per split.
    transformed_statistics_gen = tfx.components.StatisticsGen(
        examples=transform.outputs["transformed_examples"],
        stats_options=statistics_options()).with_id("TransformedStatisticsGen")

    # Continuous training: the newest pushed model of an earlier span, the Trainer's starting weights.
    warm_start_resolver = None
    warm_start = config.continuous.warm_start and not no_warm_start_because
    if inputs.span is not None and warm_start:
        warm_start_resolver = tfx.dsl.Resolver(
            strategy_class=LatestPushedModelBeforeSpan, config={"before_span": inputs.span},
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            pushed_model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.PushedModel)).with_id("warm_start_resolver")

    # The two-tower DSSM; exports score, user_embedding and item_embedding signatures. The trainer config
    # travels whole in custom_config (its steps included: no TrainArgs / EvalArgs beside it).
    trainer = tfx.components.Trainer(
        run_fn="model.trainer.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=None if warm_start_resolver is None else warm_start_resolver.outputs["model"],
        custom_config={**module_config, "trainer": config.to_dict()["trainer"], "span": inputs.span,
                       "warm_start": warm_start, "no_warm_start_because": no_warm_start_because})
    if trainer_resources is not None:  # Kubeflow: the Trainer container's cpu / memory limits
        trainer.with_platform_config(trainer_resources)

    # Full-catalog Recall/HitRate/NDCG@K against a popularity baseline; blesses a model that beats it.
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        examples=example_gen.outputs["examples"], item_vectors=item_vectors.outputs["result"],
        feature_spec=inputs.feature_spec_json, evaluation_config=json.dumps(config.to_dict()["evaluation"]),
        served_model_base=f"{serving_dir}/{config.model_name}", max_regression=config.continuous.max_regression)

    # The candidate served over gRPC by the TF Serving-protocol server in its own process, both towers
    # queried with real eval examples (TFX's InfraValidator needs Docker or Kubernetes).
    infra_validator = ServingInfraValidator(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        item_vectors=item_vectors.outputs["result"], model_name=config.model_name,
        feature_spec=inputs.feature_spec_json)

    # Where ItemIndexer writes; TowerPusher keeps every version a generation there was filled by.
    index_config = {**config.to_dict()["milvus"], "uri": milvus_uri or config.milvus.uri}

    # TF Serving layout: <serving_dir>/<model_name>/<version>/saved_model.pb, and the single-tower
    # models in <model_name>_user/ and <model_name>_item/ with the same version. Models blessed by
    # both the retrieval evaluation and the infra validation only.
    pusher = TowerPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"],
        custom_config={"keep_versions": config.keep_pushed_versions,
                       "index_config": index_config},
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=f"{serving_dir}/{config.model_name}")))

    # The blessed model's item tower over the catalog, into a new Milvus collection behind an alias.
    item_indexer = ItemIndexer(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"], pushed_model=pusher.outputs["pushed_model"],
        examples=example_gen.outputs["examples"], item_vectors=item_vectors.outputs["result"],
        feature_spec=inputs.feature_spec_json,
        index_config=index_config,
        catalog_source=config.evaluation.catalog, code_fingerprint=inputs.code_fingerprint)

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate, item_vectors,
                    transform, transformed_statistics_gen, *([warm_start_resolver] if warm_start_resolver else []),
                    trainer, evaluator, infra_validator, pusher, item_indexer],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [])
