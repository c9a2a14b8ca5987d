"""Config values are checked for type and allowed value when the config loads, before anything runs."""
import pytest

from pipeline.config import CHOICES, ConfigError, load_config


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
    config, _ = _load(tmp_path, "trainer:\n  learning_rate: 1\n  loss: pointwise\n")
    assert config.trainer.learning_rate == 1.0 and isinstance(config.trainer.learning_rate, float)
    assert config.trainer.loss == "pointwise"


def test_the_allowed_names_are_the_ones_the_trainer_knows():
    from components.losses import LOSSES
    from components.model import make_optimizer
    from pipeline.config import TrainerConfig

    assert tuple(CHOICES["trainer.loss"]) == tuple(LOSSES)
    for name in CHOICES["trainer.optimizer"]:
        make_optimizer(TrainerConfig(optimizer=name))
