"""A run assembled from its config, in one place: method, model, schedule, optimiser, step.

Training, loading a trained run (`api`), the benchmarks and the analysis tools all build the
run here, so that what they time, restore or analyse is what training runs. Nothing here reads
data or touches a workdir: the caller says what the dataset looks like and how long an epoch is.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from act_jax import methods, models, optimizers, parallel
from act_jax.data.catalog import DatasetInfo
from act_jax.train_state import ApplyFn, eval_mode_apply


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run computes with, built from its config for a mesh."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  method: methods.Method
  info: DatasetInfo
  model: nn.Module
  steps_per_epoch: int
  total_steps: int
  learning_rate_fn: optax.Schedule
  tx: optax.GradientTransformation
  hyperparams: Any

  @property
  def unrolls_attacks(self) -> bool:
    """Whether attack loops unroll on this mesh's backend (`parallel.unrolls_attack_loops`)."""
    return parallel.unrolls_attack_loops(self.mesh)

  @property
  def eval_apply(self) -> ApplyFn:
    """`(variables, images) -> logits` in eval mode, as every attack and evaluation runs."""
    return eval_mode_apply(self.model.apply)

  def train_step(self) -> Callable[..., Any]:
    """The method's per-device `(state, batch, rng) -> (state, metrics)` for this run."""
    return functools.partial(self.method.train_step, hp=self.hyperparams,
                             learning_rate_fn=self.learning_rate_fn)

  def initial_state(self, rng: jax.Array) -> Any:
    """The method's freshly initialised state, replicated over the mesh."""
    create = functools.partial(self.method.create_state, self.model, self.tx,
                               image_shape=self.info.image_shape)
    return jax.jit(create, out_shardings=NamedSharding(self.mesh, parallel.REPLICATED))(rng)


def synchronises_batch_norm(config: ml_collections.ConfigDict, mesh: Mesh) -> bool:
  """Whether BatchNorm averages its batch statistics over the mesh: as the config says, except
  over a single device, where it is plain BatchNorm and its collectives are skipped (they cost
  time on XLA:CPU and compute nothing)."""
  return config.model.sync_batch_norm and mesh.size > 1


def build(config: ml_collections.ConfigDict, mesh: Mesh, info: DatasetInfo, *,
          steps_per_epoch: int, unroll_attack: bool | None = None) -> Experiment:
  """The run `config` describes on `mesh`, for a dataset described by `info`.

  `steps_per_epoch` places the schedule's epoch boundaries; the run lasts
  `config.train.max_steps` steps, or `config.train.epochs` epochs. `unroll_attack` None unrolls
  the training attack's loop where that is faster (`parallel.unrolls_attack_loops`); the
  benchmarks set it to measure both.
  """
  if unroll_attack is None:
    unroll_attack = parallel.unrolls_attack_loops(mesh)
  method = methods.get(config.method)
  bn_axis_name = parallel.DATA_AXIS if synchronises_batch_norm(config, mesh) else None
  model = models.from_config(config, info.num_classes, bn_axis_name=bn_axis_name)
  total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch
  learning_rate_fn = optimizers.learning_rate_schedule(
      config.optim, steps_per_epoch, global_batch_size=config.train.batch_size,
      total_steps=total_steps)
  return Experiment(
      config=config, mesh=mesh, method=method, info=info, model=model,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      learning_rate_fn=learning_rate_fn,
      tx=optimizers.sgd_with_coupled_weight_decay(config.optim, learning_rate_fn),
      hyperparams=method.build_hyperparams(config, unroll_attack=unroll_attack))
