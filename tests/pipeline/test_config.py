"""Config values are checked for type and allowed value when the config loads, before anything runs."""
import re

import pytest

from model import config as component_config
from pipeline.config import ConfigError, load_config
from tests.conftest import REPO


def _load(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(str(path)), str(path)


@pytest.mark.parametrize("text,message", [
    ("trainer:\n  train_steps: five hundred\n", "trainer.train_steps: expected an integer, got 'five hundred' (str)"),
    ("trainer:\n  train_steps: 5.5\n", "trainer.train_steps: expected an integer, got 5.5 (float)"),
    ("trainer:\n  loss: softmax\n", "trainer.loss: must be one of pointwise, inbatch_softmax, mixed, got 'softmax'"),
    ("trainer:\n  optimizer: lamb\n", "trainer.optimizer: must be one of adam, adagrad, sgd, got 'lamb'"),
    ("trainer:\n  batch_norm: 'yes'\n", "trainer.batch_norm: expected true or false, got 'yes' (str)"),
    ("trainer:\n  learning_rate: fast\n", "trainer.learning_rate: expected a number, got 'fast' (str)"),
    ("trainer:\n  user_units: [256, big]\n", "trainer.user_units[1]: expected an integer, got 'big' (str)"),
    ("evaluation:\n  catalog: everything\n", "evaluation.catalog: must be one of vectors, logs"),
    ("split_buckets: {train: 9, eval: true}\n", "split_buckets.eval: expected an integer, got True (bool)"),
    ("trainer: 3\n", "trainer must be a mapping, got 3"),
    ("model_name: [a]\n", "model_name: expected a string, got ['a'] (list)"),
])
def test_a_wrong_type_or_value_names_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def test_ints_are_accepted_where_a_number_is_expected(tmp_path):
    config, _ = _load(tmp_path, "trainer:\n  learning_rate: 1\n  loss: pointwise\n  uniform_negatives: 0\n")
    assert config.trainer.learning_rate == 1.0 and isinstance(config.trainer.learning_rate, float)
    assert config.trainer.loss == "pointwise"


def test_the_allowed_names_are_the_ones_the_trainer_knows():
    from model.config import TrainerConfig
    from model.losses import LOSS_FUNCTIONS
    from model.towers import OPTIMIZERS, make_optimizer

    assert tuple(LOSS_FUNCTIONS) == component_config.LOSSES
    assert tuple(OPTIMIZERS) == component_config.OPTIMIZERS
    for name in component_config.OPTIMIZERS:
        make_optimizer(TrainerConfig(optimizer=name))


def test_the_milvus_settings_are_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match="keep_generations must be >= 1"):
        _load(tmp_path, "milvus:\n  keep_generations: 0\n")
    with pytest.raises(ConfigError, match="Milvus Lite builds FLAT, IVF_FLAT, AUTOINDEX only, not HNSW"):
        _load(tmp_path, "milvus:\n  index_type: HNSW\n")
    config, _ = _load(tmp_path, "milvus:\n  uri: http://milvus:19530\n  index_type: HNSW\n")
    assert config.milvus.index_type == "HNSW" and not config.milvus.is_lite
    with pytest.raises(ConfigError, match="an in-process index does not outlive the run"):
        _load(tmp_path, "milvus:\n  uri: memory://items\n")


@pytest.mark.parametrize("text,message", [
    ("trainer:\n  uniform_negatives: -1\n", "trainer.uniform_negatives must be >= 0"),
    ("trainer:\n  loss: pointwise\n  uniform_negatives: 8\n",
     "set trainer.uniform_negatives: 0), got 8 with loss pointwise"),
    ("trainer:\n  uniform_negatives: 9223372036854775807\n",  # int64's edge: refused before any tensor
     "trainer.uniform_negatives must be at most 65,536 (each one is an item-tower row at every training step), "
     "got 9,223,372,036,854,775,807"),
])
def test_uniform_negatives_need_a_softmax_loss(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(path))


@pytest.mark.parametrize("name", ["original_design.yaml", "continuous.yaml"])
def test_the_shipped_configs_load_with_todays_defaults(name):
    """A shipped config must still load when a default changes (the pointwise loss with the default's
    uniform negatives is refused: original_design.yaml has to say 0)."""
    import os

    config = load_config(os.path.join(REPO, "configs", name))
    if config.trainer.loss == "pointwise":
        assert config.trainer.uniform_negatives == 0
