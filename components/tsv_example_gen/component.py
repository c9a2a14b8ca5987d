"""TsvExampleGen: TFX's FileBasedExampleGen for tab-separated logs laid out by the feature spec.

TFX's CsvExampleGen reads only commas; this component keeps FileBasedExampleGen's driver (input
fingerprints, spans, caching) and its output split config (hash buckets over a feature), and adds
parameters: the feature spec (JSON), the largest share of rejected rows a split may have before the
run stops, and optionally the ids that have a pretrained vector (to count the ones that do not).
"""
from __future__ import annotations

import json

from tfx import types
from tfx.components.example_gen import utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.tsv_example_gen import executor


class TsvExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        executor.FEATURE_SPEC_KEY: ExecutionParameter(type=str),
        executor.MAX_REJECTED_FRACTION_KEY: ExecutionParameter(type=float),
        executor.ITEM_IDS_PATH_KEY: ExecutionParameter(type=str, optional=True),
        executor.TRAIN_FILES_KEY: ExecutionParameter(type=str, optional=True),
        "code_fingerprint": ExecutionParameter(type=str, optional=True),  # cache key only
    }


class TsvExampleGen(FileBasedExampleGen):
    SPEC_CLASS = TsvExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, input_base: str, feature_spec_json: str, input_config: example_gen_pb2.Input,
                 output_config: example_gen_pb2.Output | None = None,
                 max_rejected_fraction: float = 0.01, item_ids_path: str | None = None,
                 code_fingerprint: str | None = None, range_config: range_config_pb2.RangeConfig | None = None,
                 train_files: list | None = None):
        """range_config: the span to read (TFX's static range); train_files: [path, size, mtime_ns] of
        the training window's files, read for the train split instead of its pattern (the stamps
        key the cache: a file of an older span that changes re-runs the ingest)."""
        output_config = output_config or utils.make_default_output_config(input_config)
        spec = TsvExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            feature_spec=feature_spec_json,
            max_rejected_fraction=float(max_rejected_fraction),
            item_ids_path=item_ids_path,
            code_fingerprint=code_fingerprint,
            range_config=range_config,
            train_files=json.dumps(train_files) if train_files else None,
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
