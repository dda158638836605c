"""One check of the whole config at start-up, before anything compiles.

Each failure is a `ConfigError` with one line naming the field, its value and what is allowed.
"""

import math
from numbers import Real

import ml_collections

from act_jax.attacks import ATTACK_LOSS_REDUCTIONS
from act_jax.data.input_pipeline import DATASET_NAMES  # names only: TensorFlow stays unimported
from act_jax.models import MODEL_NAMES

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
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
  """Raises ConfigError for the first bad field; returns None when the config is usable."""
  _one_of(config.dataset.name, "dataset.name", DATASET_NAMES)
  _one_of(config.model.name, "model.name", MODEL_NAMES)
  _one_of(config.model.dtype, "model.dtype", DTYPES)
  _one_of(config.attack.loss_reduction, "attack.loss_reduction", ATTACK_LOSS_REDUCTIONS)
  for field in ("act.natural_alpha", "act.robust_alpha"):
    _in_range(config, field, 0.0, 1.0)
  _positive(config, "act.temperature")
  for prefix in ("attack", "eval"):
    _non_negative(config, f"{prefix}.eps")
    _non_negative(config, f"{prefix}.step_size")
  _positive_int(config, "attack.num_steps", allow_zero=True)
  _positive_int(config, "eval.num_steps")
  _positive(config, "optim.learning_rate")
  if config.optim.base_batch_size is not None:
    _positive_int(config, "optim.base_batch_size")
  _non_negative(config, "optim.warmup_epochs")
  _in_range(config, "optim.momentum", 0.0, 1.0)
  _non_negative(config, "optim.weight_decay")
  _positive(config, "optim.lr_decay_factor")
  epochs = list(config.optim.lr_decay_epochs)
  if any(e < 0 for e in epochs) or epochs != sorted(epochs):
    _fail("optim.lr_decay_epochs", tuple(epochs), "must be non-negative and increasing")
  if epochs and epochs[0] < config.optim.warmup_epochs:
    _fail("optim.warmup_epochs", config.optim.warmup_epochs,
          f"must end before the first lr decay (optim.lr_decay_epochs = {tuple(epochs)})")
  for field in ("train.epochs", "train.log_every_steps", "train.checkpoint_every_steps",
                "train.max_checkpoints_to_keep"):
    _positive_int(config, field)
  _positive_int(config, "train.eval_every_steps", allow_zero=True)
  if config.eval.num_examples is not None:
    _positive_int(config, "eval.num_examples")
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
