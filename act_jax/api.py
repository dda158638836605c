"""Public API for other tools: a trained run, and any of its models as a plain jit-able function."""

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from act_jax import checkpointing, methods, parallel, reporting
from act_jax import experiment as experiment_lib
from act_jax.data import datasets
from act_jax.data.catalog import DatasetInfo
from act_jax.errors import UserError
from act_jax.methods.common import all_finite
from act_jax.train_state import ModelState, eval_mode_logits


class RunNotFoundError(UserError, FileNotFoundError):
  """The workdir holds no run, or no checkpoint of the asked step."""


class NonFiniteCheckpointError(UserError):
  """A checkpoint's weights are not all finite; its model would only compute NaNs."""


class ImagesError(UserError, ValueError):
  """Images a model cannot classify as given: not float, out of [0, 1], or of another shape."""


class UnfinishedRunWarning(UserWarning):
  """The loaded checkpoint is not the end of its run's training."""


def run_status(workdir: str, step: int) -> tuple[bool | None, int | None]:
  """(whether `step` is the end of the run's training, the steps it trains for), from
  `results.json`; None where that is unknown (no results.json, or one from an older act_jax)."""
  try:
    results = reporting.read_json(epath.Path(workdir) / "results.json")  # a bucket too
  except (OSError, ValueError):
    return None, None
  total = results.get("total_steps")
  return "final" in results and (total is None or step >= total), total


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A finished (or checkpointed) run: how it was built, its restored state and its step.

  `total_steps` is what the run trains for and `finished` whether `step` is its end (both from
  `results.json`; None where that is unknown): a checkpoint of an unfinished run is a model
  part-way through its schedule, not the run's result.
  """
  experiment: experiment_lib.Experiment
  state: Any
  step: int
  total_steps: int | None = None
  finished: bool | None = None

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.experiment.config

  @property
  def method(self) -> methods.Method:
    return self.experiment.method

  @property
  def model(self) -> nn.Module:
    return self.experiment.model

  @property
  def info(self) -> DatasetInfo:
    return self.experiment.info

  @property
  def models(self) -> dict[str, ModelState]:
    """The run's models by name: "natural" and "robust" for ACT, one of them otherwise."""
    return self.method.models(self.state)


def load_run(workdir: str, *, step: int | None = None,
             devices: list[jax.Device] | None = None) -> TrainedRun:
  """Rebuilds a run from `WORKDIR/config.json` and its newest checkpoint (or that of `step`).

  The state is replicated over `devices` (default: the first local device).
  """
  workdir_path = epath.Path(workdir)
  config_path = workdir_path / "config.json"
  if not config_path.exists():
    raise RunNotFoundError(f"{config_path} not found: is {workdir} an act_jax workdir?")
  config = ml_collections.ConfigDict(reporting.read_json(config_path))
  mesh = parallel.make_mesh(devices or jax.local_devices()[:1])
  # Only the state's structure matters for restoring; the schedule's length does not.
  exp = experiment_lib.build(config, mesh, datasets.dataset_info(config.dataset),
                             steps_per_epoch=1)
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=None, read_only=True)
  restored = checkpointing.restore_latest(
      manager, exp.initial_state(jax.random.PRNGKey(0)),
      parallel.replicate(jax.random.PRNGKey(0), mesh), step=step)
  if restored is None:
    raise RunNotFoundError(f"no checkpoint in {workdir_path / 'checkpoints'}")
  state, _, restored_step = restored
  finished, total_steps = run_status(workdir, restored_step)
  run = TrainedRun(experiment=exp, state=state, step=restored_step, total_steps=total_steps,
                   finished=finished)
  damaged = [name for name, model_state in run.models.items()
             if not bool(all_finite(model_state.variables))]
  if damaged:
    raise NonFiniteCheckpointError(
        f"checkpoint step {run.step} in {workdir} holds non-finite weights (NaN or inf) in the "
        f"{' and '.join(damaged)} model: the run diverged before it was saved")
  return run


@dataclasses.dataclass(frozen=True)
class Model:
  """One model of a trained run: `logits = model(images)`, and what it is.

  `images` are NHWC float32 in [0, 1] with no normalisation, as in training; for a model of
  one channel (Fashion-MNIST) the channel axis may be left out, (N, 28, 28) as the dataset
  stores them. Anything else is refused in one line (`ImagesError`): uint8 images would be
  classified as values 255 times too large, silently wrong. The range is checked on concrete
  arrays; inside `jax.jit` or `jax.grad` only dtype and shape are (values are not known there).
  Logits are float32; the model runs in eval mode (running BatchNorm statistics) and composes
  with other JAX code, e.g. to attack it.
  """
  logits_fn: Callable[[jax.Array], jax.Array]
  workdir: str
  method: str
  which: str
  step: int
  total_steps: int | None
  finished: bool | None
  image_shape: tuple[int, int, int]

  def __call__(self, images: Any) -> jax.Array:
    return self.logits_fn(self.checked_images(images))

  def checked_images(self, images: Any) -> Any:
    """`images` as float32 NHWC, or an `ImagesError` naming what was given and what is not."""
    shape = tuple(np.shape(images))
    dtype = images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype
    one_channel = self.image_shape[-1] == 1
    if one_channel and shape[1:] == self.image_shape[:-1]:
      images, shape = jnp.expand_dims(jnp.asarray(images), -1), (*shape, 1)
    if shape[1:] != self.image_shape:
      expected = "(N, " + ", ".join(map(str, self.image_shape)) + ")"
      alone = shape == self.image_shape or (one_channel and shape == self.image_shape[:-1])
      raise ImagesError(f"images of shape {shape}; this model takes NHWC {expected}"
                        + (" (one image: add a batch axis, images[None])" if alone else ""))
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ImagesError(f"images of dtype {dtype}; this model takes float32 in [0, 1]: pass "
                        "images.astype(np.float32) / 255")
    if not isinstance(images, jax.core.Tracer):
      low, high = np.asarray(jnp.stack([jnp.min(images), jnp.max(images)]), np.float64)
      if not (low >= 0 and high <= 1):
        hint = (": divide them by 255" if low >= 0 and 1 < high <= 255
                else " with no normalisation: undo any mean/std scaling")
        raise ImagesError(f"images with values in [{low:.4g}, {high:.4g}]; this model takes "
                          f"float32 in [0, 1]{hint}")
    return jnp.asarray(images, jnp.float32)

  def __repr__(self) -> str:
    of = f" of {self.total_steps}" if self.total_steps else ""
    state = {True: "finished", False: "unfinished", None: "status unknown"}[self.finished]
    return (f"act_jax Model({self.method} run {self.workdir}, {self.which} model, step "
            f"{self.step}{of}, {state})")


def load_model(workdir: str, which: str | None = None, *, step: int | None = None) -> Model:
  """One model of the newest checkpoint in `workdir` (or that of `step`), as a `Model`.

  `which` names the model: "natural" or "robust" for an ACT run, the run's only model for the
  other methods ("natural" for natural training, "robust" for PGD-AT and TRADES); None takes
  the robust model where there is one. The returned `Model` is called on images (see `Model`)
  and says what it holds: `.step`, `.total_steps`, `.finished`. Loading the newest checkpoint
  of an unfinished run (stopped, or still training) warns once (`UnfinishedRunWarning`): its
  model is not the run's result.
  """
  run = load_run(workdir, step=step)
  which = which or run.method.default_model
  if which not in run.models:
    raise ValueError(f"which={which!r}: this {run.method.name} run has "
                     f"{', '.join(run.method.model_names)}")
  if step is None and run.finished is False:
    of = f" of {run.total_steps:,}" if run.total_steps else ""
    warnings.warn(f"{workdir} holds an unfinished run: its newest checkpoint is step "
                  f"{run.step:,}{of}, a model part-way through training", UnfinishedRunWarning,
                  stacklevel=2)
  return Model(logits_fn=jax.jit(eval_mode_logits(run.models[which])), workdir=str(workdir),
               method=run.method.name, which=which, step=run.step,
               total_steps=run.total_steps, finished=run.finished,
               image_shape=tuple(run.info.image_shape))
