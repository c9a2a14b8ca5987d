"""Pipeline configuration: dataclasses with defaults, loaded from an optional YAML file.

Every option and its default is listed in README.md ("Configuration"); an unknown key is an error.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import yaml

from schema.spec import DEFAULT_SCHEMA_PATH, DEFAULT_SPEC_PATH


class ConfigError(ValueError):
    pass


@dataclass
class TrainerConfig:
    # Defaults: the best configuration found on MovieLens (bench/movielens_quality.py); the original
    # design's pointwise setup is configs/original_design.yaml.
    train_steps: int = 3000
    epochs: int = 0                  # > 0: this many passes over the training split instead of train_steps
    eval_steps: int = 0              # 0 = the whole eval split
    batch_size: int = 128
    optimizer: str = "adam"          # adam | adagrad | sgd
    learning_rate: float = 0.001
    loss: str = "mixed"              # pointwise | inbatch_softmax | mixed (components/losses.py)
    gamma: float = 10.0              # cosine x gamma (the original design's temperature trick)
    pos_weight: float = 1.2          # pointwise: weight of act=1 rows in the binary cross-entropy
    temperature: float = 0.1         # in-batch losses: softmax over cosine / temperature
    logq_correction: bool = True     # in-batch losses: subtract log of the item's click frequency
    user_units: list[int] = field(default_factory=lambda: [256, 256, 128])
    item_units: list[int] = field(default_factory=lambda: [256, 256, 128])
    activation: str = "relu"         # hidden layers
    output_activation: str = "tanh"  # last layer, before L2 normalisation
    dropout: float = 0.0
    batch_norm: bool = False
    embedding_stddev: float = 1.0    # init of the trainable tables (the original's 0.0 froze them at 0)
    normalize: bool = True           # L2-normalise the tower outputs (cosine similarity)
    seed: int = 1024
    # Validation-driven training: the eval split's loss every eval_every_steps steps (every epoch
    # with `epochs`); training stops after `patience` evaluations without a better loss and keeps the
    # best weights. train_steps / epochs are then upper bounds.
    early_stopping: bool = True
    eval_every_steps: int = 250
    patience: int = 4
    warn_passes: float = 20.0        # warn when train_steps x batch_size exceeds this many passes over the data


@dataclass
class EvaluationConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 100])
    catalog: str = "vectors"         # vectors (the item-vector file's items) | logs (items in the logs)
    exclude_read: bool = True        # drop the user's read posts from the ranking
    bless_k: int = 50                # blessed only if Recall@bless_k beats popularity ...
    bless_margin: float = 0.0        # ... by more than this
    auc_floor: float = 0.0           # and, when > 0, the eval AUC reaches this
    max_users: int = 10_000          # eval users ranked against the full catalog: a stable sample by
                                     # user-id hash when there are more (cost ~ users x items); 0 = all
    min_eval_users: int = 200        # fewer eval users than this: not blessed (the lift is too uncertain) ...
    allow_few_eval_users: bool = False  # ... unless this is set
    bootstrap_samples: int = 1000    # resamples of the eval users for the confidence interval of the lift


@dataclass
class MilvusConfig:
    # Where ItemIndexer writes the item vectors: "" = a Milvus Lite file <workdir>/milvus.db; or a
    # server, http://host:19530 (with token). Fields as serving.item_index.IndexConfig.
    uri: str = ""
    token: str = ""
    alias: str = "dssm_items"        # queries go through this alias; each run writes a new collection
    # FLAT (exact) by default. On Milvus Lite 2.5, IVF_FLAT / AUTOINDEX on a 100k-item collection
    # return ~0.7 of the true top 100 whatever the parameters (interim index); at 1M items IVF_FLAT
    # nlist 4000 is exact and 10x faster than FLAT (bench/milvus_search.py, README "Recall with Milvus").
    index_type: str = "FLAT"         # FLAT | IVF_FLAT | AUTOINDEX on Milvus Lite; any type on a server
    index_params: dict = field(default_factory=dict)   # e.g. {nlist: 4096}; IVF nlist is capped at items / 39
    search_params: dict = field(default_factory=dict)  # e.g. {nprobe: 64}
    keep_generations: int = 2        # collections kept per alias, the serving one included
    insert_batch: int = 500
    insert_threads: int = 8


@dataclass
class KubeflowConfig:
    # `run_pipeline.py kubeflow`: the image every step runs in, and what the steps get.
    image: str = "dssm-recall-pipeline:latest"   # built from the Dockerfile, pushed to your registry
    pipeline_root: str = ""                      # e.g. gs://bucket/dssm; --pipeline-root overrides
    beam_args: list[str] = field(default_factory=list)  # e.g. [--runner=DataflowRunner, --project=P, ...]
    trainer_cpu: float = 0.0                     # Trainer container limits (0 = the cluster's default)
    trainer_memory_gib: float = 0.0


@dataclass
class PipelineConfig:
    pipeline_name: str = "dssm-recall"  # [a-z0-9-]: Kubeflow accepts no other characters
    model_name: str = "dssm"         # serving folder: <workdir>/serving/<model_name>/<version>/
    keep_pushed_versions: int = 3    # versions kept in each serving folder after a push (0 = all)
    feature_spec: str = DEFAULT_SPEC_PATH
    schema: str = DEFAULT_SCHEMA_PATH
    max_rejected_fraction: float = 0.01
    # With one --input: hash buckets per split over the user id (stable: a user is in one split).
    split_buckets: dict[str, int] = field(default_factory=lambda: {"train": 9, "eval": 1})
    num_oov_buckets: int = 1
    enable_cache: bool = True
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)

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
    if config.trainer.epochs < 0 or config.trainer.train_steps <= 0:
        raise ConfigError("trainer.train_steps must be > 0 and trainer.epochs >= 0")
    if config.trainer.eval_every_steps <= 0 or config.trainer.patience <= 0:
        raise ConfigError("trainer.eval_every_steps and trainer.patience must be > 0")
    if config.evaluation.min_eval_users < 0 or config.evaluation.bootstrap_samples < 100:
        raise ConfigError("evaluation.min_eval_users must be >= 0 and evaluation.bootstrap_samples >= 100")
    if config.evaluation.catalog not in ("vectors", "logs"):
        raise ConfigError(f"evaluation.catalog must be 'vectors' or 'logs', got '{config.evaluation.catalog}'")
    if not config.evaluation.ks or not all(isinstance(k, int) and k > 0 for k in config.evaluation.ks):
        raise ConfigError(f"evaluation.ks must be positive integers, got {config.evaluation.ks}")
    if config.keep_pushed_versions < 0:
        raise ConfigError("keep_pushed_versions must be >= 0 (0 keeps every pushed version)")
    if config.milvus.keep_generations < 1:
        raise ConfigError("milvus.keep_generations must be >= 1 (the serving generation)")
    if not 0 <= config.max_rejected_fraction <= 1:
        raise ConfigError(f"max_rejected_fraction must be in [0, 1], got {config.max_rejected_fraction}")
    return config


# Values a key may take, checked when the config loads (before any component runs). The trainer's
# names must equal what components/losses.py and components/model.py accept (tests/test_config.py).
CHOICES = {
    "trainer.loss": ("pointwise", "inbatch_softmax", "mixed"),
    "trainer.optimizer": ("adam", "adagrad", "sgd"),
    "evaluation.catalog": ("vectors", "logs"),
}
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
    kwargs = {}
    nested = {"trainer": TrainerConfig, "evaluation": EvaluationConfig, "milvus": MilvusConfig,
              "kubeflow": KubeflowConfig}
    for key, value in data.items():
        if key in nested and cls is PipelineConfig:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
            kwargs[key] = _build(nested[key], value or {}, where, f"{key}.")
        else:
            kwargs[key] = _typed(value, hints[key], f"{where}: {prefix}{key}")
            allowed = CHOICES.get(prefix + key)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{where}: {prefix}{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return cls(**kwargs)


def load_config(path: str | None = None, overrides: dict | None = None) -> PipelineConfig:
    data: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        overrides = dict(overrides)
        for key in ("trainer", "evaluation", "milvus", "kubeflow"):
            if key in overrides:
                overrides[key] = {**data.get(key, {}), **overrides[key]}
        data = {**data, **overrides}
    return _check(_build(PipelineConfig, data, path or "config"))
