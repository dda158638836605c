"""Public API for other tools: a trained run, and any of its models as a plain jit-able function."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
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


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A finished (or checkpointed) run: how it was built, its restored state and its step."""
  experiment: experiment_lib.Experiment
  state: Any
  step: int

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
  run = TrainedRun(experiment=exp, state=state, step=restored_step)
  damaged = [name for name, model_state in run.models.items()
             if not bool(all_finite(model_state.variables))]
  if damaged:
    raise NonFiniteCheckpointError(
        f"checkpoint step {run.step} in {workdir} holds non-finite weights (NaN or inf) in the "
        f"{' and '.join(damaged)} model: the run diverged before it was saved")
  return run


def load_model(workdir: str, which: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """`logits = f(images)` for one model of the newest checkpoint in `workdir`.

  `which` names the model: "natural" or "robust" for an ACT run, the run's only model for the
  other methods ("natural" for natural training, "robust" for PGD-AT and TRADES); None takes
  the robust model where there is one. `images` are NHWC float32 in [0, 1] (no
  normalisation, as in training); logits are float32. The model runs in eval mode (running
  BatchNorm statistics). The returned function is jitted and can be used inside other jitted
  code, e.g. to attack the model.
  """
  run = load_run(workdir)
  which = which or run.method.default_model
  if which not in run.models:
    raise ValueError(f"which={which!r}: this {run.method.name} run has "
                     f"{', '.join(run.method.model_names)}")
  return jax.jit(eval_mode_logits(run.models[which]))
