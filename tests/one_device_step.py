"""The act_jax train step on one device, as tests that compare one step against a reference run it."""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from act_jax import optimizers, parallel
from act_jax.train_step import ACTHyperparams, train_step


def run_one_device_step(model, tx, state, batch, rng, *, hp: ACTHyperparams,
                        optim_config: ml_collections.ConfigDict, steps_per_epoch: int = 10):
  """One step through the training path (shard_map in jit on a one-device mesh).

  The state is copied first, since the step donates it and callers keep comparing against it.
  """
  step = parallel.distribute_train_step(
      functools.partial(train_step, model=model, tx=tx, hp=hp,
                        learning_rate_fn=optimizers.learning_rate_schedule(optim_config,
                                                                           steps_per_epoch)),
      parallel.make_mesh(jax.devices()[:1]))
  return step(jax.tree.map(jnp.copy, state), batch, rng)
