"""Every config field that can be wrong is rejected with a one-line error naming it."""

import importlib

import pytest

from act_jax.config_validation import ConfigError, validate_config

CONFIG_NAMES = ["fashion_mnist", "cifar10", "cifar10_wrn", "cifar100", "imagenet"]


def load(name="fashion_mnist"):
  return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_are_valid(name):
  validate_config(load(name), num_devices=8, num_processes=2)


BAD_VALUES = [
    ("act.natural_alpha", 1.5, r"\[0.0, 1.0\]"),
    ("act.robust_alpha", -0.1, r"\[0.0, 1.0\]"),
    ("act.temperature", 0.0, "> 0"),
    ("act.temperature", float("nan"), "finite"),
    ("attack.eps", -0.01, r"in \[0, 1\]"),
    ("attack.eps", 8, r"in \[0, 1\]: images are in \[0, 1\], so 8/255 is 0.0314"),
    ("attack.step_size", -1.0, r"in \[0, 1\]"),
    ("attack.step_size", 2.0, r"in \[0, 1\]"),
    ("attack.num_steps", -1, "integer >= 0"),
    ("attack.loss_reduction", "sum", "reference, mean"),
    ("eval.eps", -0.5, r"in \[0, 1\]"),
    ("eval.eps", 8.0, r"in \[0, 1\]"),
    ("eval.num_steps", 0, "integer >= 1"),
    ("model.name", "resnet9000", "small_cnn"),
    ("model.dtype", "float16", "float32, bfloat16"),
    ("dataset.name", "mnist", "fashion_mnist, cifar10"),
    ("optim.learning_rate", 0.0, "> 0"),
    ("optim.momentum", 1.5, r"\[0.0, 1.0\]"),
    ("optim.weight_decay", -1e-4, ">= 0"),
    ("optim.lr_decay_epochs", (3, 2), "increasing"),
    ("optim.base_batch_size", 0, "integer >= 1"),
    ("optim.warmup_epochs", -1.0, ">= 0"),
    ("optim.warmup_epochs", 80.0, "must end before the first lr decay"),
    ("train.epochs", 0, "integer >= 1"),
    ("train.max_steps", 0, "integer >= 1"),
    ("train.batch_size", 100, "divisible by the number of devices"),
    ("eval.batch_size", 12, "divisible by the number of devices"),
    ("eval.num_examples", 0, "integer >= 1"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES)
def test_bad_field_is_named(field, value, message):
  config = load()
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(ConfigError, match=message) as error:
    validate_config(config, num_devices=8)
  assert str(error.value).startswith(f"config.{field} = ")
  assert "\n" not in str(error.value)


def test_batch_must_split_over_processes():
  config = load()
  config.train.batch_size = 8
  config.eval.batch_size = 8
  with pytest.raises(ConfigError, match="number of processes"):
    validate_config(config, num_devices=4, num_processes=3)
