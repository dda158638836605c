"""One check of the whole config at start-up, before anything compiles.

Each failure is a `ConfigError` with one line naming the field, its value and what is allowed.
"""

import math
from numbers import Real

import ml_collections

from act_jax import methods, optimizers
from act_jax.attacks import ATTACK_LOSS_REDUCTIONS
from act_jax.data.catalog import (
  DATASET_NAMES,
  EVAL_SPLITS,
  IN_MEMORY_DATASETS,
  OWN_DATASETS,
  TFDS_BY_NAME,
)
from act_jax.errors import UserError
from act_jax.models import MODEL_NAMES

DTYPES = ("float32", "bfloat16")


class ConfigError(UserError, ValueError):
  """A config value is out of its allowed range."""


def _fail(field: str, value, allowed: str):
  raise ConfigError(f"config.{field} = {value!r}: {allowed}")


def _number(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
    _fail(field, value, "must be a finite number")
  return value


def _in_range(config, field: str, low: float, high: float, *, low_open: bool = False):
  value = _number(config, field)
  if value < low or value > high or (low_open and value == low):
    bracket = "(" if low_open else "["
    _fail(field, value, f"must be in {bracket}{low}, {high}]")


def _positive(config, field: str):
  if _number(config, field) <= 0:
    _fail(field, _number(config, field), "must be > 0")


def _non_negative(config, field: str):
  if _number(config, field) < 0:
    _fail(field, _number(config, field), "must be >= 0")


def _positive_int(config, field: str, *, allow_zero: bool = False):
  value = _number(config, field)
  if int(value) != value or value < (0 if allow_zero else 1):
    _fail(field, value, "must be an integer >= " + ("0" if allow_zero else "1"))


def _one_of(value, field: str, allowed: tuple[str, ...]):
  if value not in allowed:
    _fail(field, value, "allowed: " + ", ".join(allowed))


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    num_processes: int = 1) -> None:
  """Raises ConfigError for the first bad field; returns None when the config is usable.

  Fields that only one method reads (`act.*`, `trades.*`, the training attack) are checked
  for the method that reads them.
  """
  _one_of(config.method, "method", methods.METHOD_NAMES)
  _one_of(config.dataset.name, "dataset.name", DATASET_NAMES)
  if config.dataset.name in OWN_DATASETS and not config.dataset.get("path"):
    _fail("dataset.path", config.dataset.get("path"),
          f"dataset.name = {config.dataset.name} reads one's own data from it: "
          + ("an .npz file" if config.dataset.name == "npz" else "a folder with train/ and test/"))
  if config.dataset.name == TFDS_BY_NAME and not config.dataset.get("tfds_name"):
    _fail("dataset.tfds_name", config.dataset.get("tfds_name"),
          "dataset.name = tfds reads the TFDS image classification dataset of this name, "
          "e.g. mnist or svhn_cropped")
  _one_of(config.model.name, "model.name", MODEL_NAMES)
  _one_of(config.model.dtype, "model.dtype", DTYPES)
  if config.method == "act":
    _one_of(config.attack.loss_reduction, "attack.loss_reduction", ATTACK_LOSS_REDUCTIONS)
    for field in ("act.natural_alpha", "act.robust_alpha"):
      _in_range(config, field, 0.0, 1.0)
    _positive(config, "act.temperature")
  if config.method == "trades":
    _non_negative(config, "trades.beta")
  prefixes = ("eval",) if config.method == "natural" else ("attack", "eval")
  for prefix in prefixes:
    for field in (f"{prefix}.eps", f"{prefix}.step_size"):
      value = _number(config, field)
      if not 0 <= value <= 1:  # the /255 habit: eps = 8 for 8/255
        _fail(field, value, "must be in [0, 1]: images are in [0, 1], so 8/255 is 0.0314")
  if config.method != "natural":
    _positive_int(config, "attack.num_steps", allow_zero=True)
  _positive_int(config, "eval.num_steps")
  _one_of(config.eval.split, "eval.split", EVAL_SPLITS)
  _positive_int(config, "dataset.validation_examples", allow_zero=True)
  if config.dataset.validation_examples and config.dataset.name not in IN_MEMORY_DATASETS:
    _fail("dataset.validation_examples", config.dataset.validation_examples,
          f"a hold-out needs an in-memory dataset ({', '.join(IN_MEMORY_DATASETS)})")
  if config.eval.split == "validation" and not config.dataset.validation_examples:
    _fail("eval.split", config.eval.split, "needs dataset.validation_examples > 0")
  _positive(config, "optim.learning_rate")
  _one_of(config.optim.schedule, "optim.schedule", optimizers.SCHEDULES)
  if config.optim.base_batch_size is not None:
    _positive_int(config, "optim.base_batch_size")
  _non_negative(config, "optim.warmup_epochs")
  _in_range(config, "optim.momentum", 0.0, 1.0)
  _non_negative(config, "optim.weight_decay")
  _positive(config, "optim.lr_decay_factor")
  epochs = list(config.optim.lr_decay_epochs)
  if any(e < 0 for e in epochs) or epochs != sorted(epochs):
    _fail("optim.lr_decay_epochs", tuple(epochs), "must be non-negative and increasing")
  if config.optim.schedule == "piecewise" and epochs and epochs[0] < config.optim.warmup_epochs:
    _fail("optim.warmup_epochs", config.optim.warmup_epochs,
          f"must end before the first lr decay (optim.lr_decay_epochs = {tuple(epochs)})")
  for field in ("train.epochs", "train.log_every_steps", "train.checkpoint_every_steps",
                "train.max_checkpoints_to_keep"):
    _positive_int(config, field)
  _positive_int(config, "train.eval_every_steps", allow_zero=True)
  for field in ("num_examples", "periodic_num_examples"):
    if config.eval.get(field) is not None:
      _positive_int(config, f"eval.{field}")
  if config.train.max_steps is not None:
    _positive_int(config, "train.max_steps")
  if config.model.base_width is not None:
    _positive_int(config, "model.base_width")
  for field in ("train.batch_size", "eval.batch_size"):
    _positive_int(config, field)
    if _number(config, field) % num_devices:
      _fail(field, _number(config, field),
            f"must be divisible by the number of devices ({num_devices})")
    if _number(config, field) % num_processes:
      _fail(field, _number(config, field),
            f"must be divisible by the number of processes ({num_processes})")
