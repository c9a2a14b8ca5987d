"""Pipeline configuration: dataclasses with defaults, loaded from an optional YAML file.

Every option and its default is listed in docs/configuration.md (generated from these dataclasses by
pipeline/config_doc.py); an unknown key is an error.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from common import signature_names
from common.yaml_files import read_yaml_mapping
from model.config import EvaluationConfig, TrainerConfig
from retrieval.index import IndexConfig
from schema.spec import DEFAULT_SCHEMA_PATH, DEFAULT_SPEC_PATH


class ConfigError(ValueError):
    pass


@dataclass
class ContinuousConfig:
    # Daily runs on {SPAN} log patterns (docs/continuous.md): the training split is the
    # last `window` spans up to the chosen one (TFX's RollingRange, clipped to the spans that exist);
    # the eval split is the chosen span's.
    window: int = 1                          # training spans up to the chosen one
    # The candidate is ranked beside the version served now (same eval users and catalog) and is
    # not blessed when its recall@bless_k is lower by more than this with 95% confidence.
    max_regression: float = 0.0
    # With {SPAN} logs, the Trainer starts from the weights of the newest pushed model trained on an
    # earlier span (ids keep their embedding rows across vocabularies: model/warm_start.py).
    warm_start: bool = True


@dataclass
class KubeflowConfig:
    # `run_pipeline.py kubeflow`: the image every step runs in, and what the steps get.
    image: str = "dssm-recall-pipeline:latest"   # built from the Dockerfile, pushed to your registry
    pipeline_root: str = ""                      # e.g. gs://bucket/dssm; --pipeline-root overrides
    beam_args: list[str] = field(default_factory=list)  # e.g. [--runner=DataflowRunner, --project=P, ...]
    trainer_cpu: float = 0.0                     # Trainer container limits (0 = the cluster's default)
    trainer_memory_gib: float = 0.0              # GiB; 0 = the cluster's default


@dataclass
class PipelineConfig:
    pipeline_name: str = "dssm-recall"  # [a-z0-9-]: Kubeflow accepts no other characters
    model_name: str = signature_names.MODEL_NAME  # serving folder: <workdir>/serving/<model_name>/<version>/
    keep_pushed_versions: int = 3    # versions kept in each serving folder after a push (0 = all)
    feature_spec: str = DEFAULT_SPEC_PATH    # the feature spec (docs/model.md); --feature-spec overrides
    schema: str = DEFAULT_SCHEMA_PATH        # the curated TFDV schema ExampleValidator checks the logs against
    max_rejected_fraction: float = 0.01      # stop the run when a larger share of a split's rows is rejected
    # With one --input: hash buckets per split over the user id (stable: a user is in one split).
    split_buckets: dict[str, int] = field(default_factory=lambda: {"train": 9, "eval": 1})
    num_oov_buckets: int = 1                 # out-of-vocabulary buckets of every id vocabulary
    enable_cache: bool = True                # reuse finished components with identical inputs and code
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Where ItemIndexer writes the item vectors (retrieval/index.py): uri "" = a Milvus Lite file
    # <workdir>/milvus.db, or a server, http://host:19530 (with token).
    milvus: IndexConfig = field(default_factory=IndexConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)
    continuous: ContinuousConfig = field(default_factory=ContinuousConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(config: PipelineConfig) -> PipelineConfig:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,127}", config.pipeline_name):
        raise ConfigError(f"pipeline_name {config.pipeline_name!r}: use lower-case letters, digits and '-' "
                          "(Kubeflow's rule)")
    if set(config.split_buckets) != {"train", "eval"} or not all(
            isinstance(v, int) and v > 0 for v in config.split_buckets.values()):
        raise ConfigError(f"split_buckets must give positive integers for train and eval, got {config.split_buckets}")
    try:  # each section that has checks runs them itself, beside its defaults
        for key in sections():
            section = getattr(config, key)
            if hasattr(section, "validate"):
                section.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.keep_pushed_versions < 0:
        raise ConfigError("keep_pushed_versions must be >= 0 (0 keeps every pushed version)")
    if config.milvus.in_memory:  # the index would end with the run's process; recall comes later
        raise ConfigError(f"milvus.uri {config.milvus.uri}: an in-process index does not outlive the run; "
                          "give a Milvus Lite file (or '') or a server")
    if not 0 <= config.continuous.max_regression <= 1:
        raise ConfigError(f"continuous.max_regression must be in [0, 1], got {config.continuous.max_regression}")
    if config.continuous.window < 1:
        raise ConfigError(f"continuous.window must be >= 1, got {config.continuous.window}")
    if not 0 <= config.max_rejected_fraction <= 1:
        raise ConfigError(f"max_rejected_fraction must be in [0, 1], got {config.max_rejected_fraction}")
    return config


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _typed(value, expected, where: str):
    """`value` checked against the field's type (int, float, str, bool, list[...], dict[...]); ints are
    accepted for floats. ConfigError naming the key, the type and the value otherwise."""
    origin = typing.get_origin(expected) or expected
    ok = (isinstance(value, bool) if origin is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if origin is float
          else isinstance(value, origin) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {_TYPE_NAMES.get(origin, origin.__name__)}, "
                          f"got {value!r} ({type(value).__name__})")
    args = typing.get_args(expected)
    if origin is list and args:
        return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and args:
        return {_typed(k, args[0], f"{where} key"): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return float(value) if origin is float else value


def _build(cls, data: dict, where: str, prefix: str = ""):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}
    kwargs = {}
    nested = sections() if cls is PipelineConfig else {}
    for key, value in data.items():
        if key in nested:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
            kwargs[key] = _build(nested[key], value or {}, where, f"{key}.")
        else:
            kwargs[key] = _typed(value, hints[key], f"{where}: {prefix}{key}")
            allowed = choices[key]  # the values a key may take, checked before any component runs
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{where}: {prefix}{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return cls(**kwargs)


def sections() -> dict[str, type]:
    """{key: dataclass} of PipelineConfig's sections (trainer:, evaluation:, ...), read off its fields:
    the one list of them."""
    hints = typing.get_type_hints(PipelineConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(PipelineConfig)
            if dataclasses.is_dataclass(hints[f.name])}


def load_config(path: str | None = None, overrides: dict | None = None) -> PipelineConfig:
    data: dict = {}
    if path:
        data = read_yaml_mapping(path, "config", ConfigError, empty_is_ok=True)
    if overrides:
        overrides = dict(overrides)
        for key in sections():
            if key in overrides:
                overrides[key] = {**data.get(key, {}), **overrides[key]}
        data = {**data, **overrides}
    return _check(_build(PipelineConfig, data, path or "config"))
