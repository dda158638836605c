"""The act_jax ACT step as `throughput` times it: the training code path.

The step is `train_step` under `parallel.distribute_train_step` (shard_map in jit, donated
state) on a mesh of the given devices, exactly what `act_jax.train` runs per step, with the
workload's recipe and synthetic data created on the devices.
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from act_jax import models, optimizers, parallel
from act_jax.attacks import parts
from act_jax.methods.act import ACTHyperparams, train_step
from act_jax.train_state import create_act_state
from benchmarks import flops
from benchmarks.workloads import Workload

# Steps per epoch only place the recipe's learning-rate boundaries; they do not change the work.
STEPS_PER_EPOCH = 1000


@dataclasses.dataclass
class CompiledACTStep:
  """A compiled step with its inputs: `step()` dispatches one step (asynchronously, as
  training does), `synchronize()` waits for the dispatched work, `run()` does both."""
  step: Callable[[], None]
  synchronize: Callable[[], None]
  compile_seconds: float
  xla_step_flops: float | None  # XLA cost analysis of the whole step, where its loop is unrolled
  hyperparams: ACTHyperparams

  def run(self) -> None:
    self.step()
    self.synchronize()


def cost_analysis_flops(compiled: Any) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"])


def synthetic_batch(workload: Workload, batch_size: int, sharding: NamedSharding
                    ) -> dict[str, jax.Array]:
  """Uniform images in [0, 1] and uniform labels, generated directly on the device."""

  def make(key):
    image_key, label_key = jax.random.split(key)
    return {"image": jax.random.uniform(image_key, (batch_size, *workload.image_shape)),
            "label": jax.random.randint(label_key, (batch_size,), 0, workload.num_classes)}

  return jax.jit(make, out_shardings=sharding)(jax.random.PRNGKey(1))


def forward_flops_per_image(workload: Workload) -> float:
  """Model FLOPs of one forward pass per image (`benchmarks.flops`: every convolution and
  matrix product of the program, the same on every backend)."""
  model = models.from_config(workload.recipe(), workload.num_classes)
  images = jax.ShapeDtypeStruct((1, *workload.image_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                             images)
  return flops.forward_flops_per_image(functools.partial(model.apply, train=False), variables,
                                       workload.image_shape)


def compile_act_step(workload: Workload, *, batch_size: int, pgd_steps: int,
                     model_dtype: jnp.dtype, devices: list[jax.Device],
                     unroll_attack: bool | None = None, donate_state: bool = True
                     ) -> CompiledACTStep:
  """Builds the state and batch on `devices`, compiles the step (timed) and returns it.

  With several devices the batch is split over them, as in data-parallel training.
  `unroll_attack` None unrolls the attack where training would (on CPU); the variants
  benchmark sets it, and `donate_state`, to measure what each choice is worth.
  """
  config = workload.recipe()
  config.model.dtype = jnp.dtype(model_dtype).name
  mesh = parallel.make_mesh(devices)
  if unroll_attack is None:
    unroll_attack = parallel.unrolls_attack_loops(mesh)
  config.attack.num_steps = pgd_steps
  hp = ACTHyperparams.from_config(config, unroll_attack=unroll_attack)
  model = models.from_config(
      config, workload.num_classes,
      bn_axis_name=parallel.DATA_AXIS if config.model.sync_batch_norm else None)
  tx = optimizers.sgd_with_coupled_weight_decay(config.optim, STEPS_PER_EPOCH,
                                                global_batch_size=batch_size)
  learning_rate_fn = optimizers.learning_rate_schedule(config.optim, STEPS_PER_EPOCH,
                                                       global_batch_size=batch_size)
  replicated = NamedSharding(mesh, parallel.REPLICATED)
  state = jax.jit(lambda rng: create_act_state(model, tx, rng, workload.image_shape),
                  out_shardings=replicated)(jax.random.PRNGKey(0))
  batch = synthetic_batch(workload, batch_size, NamedSharding(mesh, parallel.SHARDED))
  rng = jax.device_put(jax.random.PRNGKey(2), replicated)
  step = parallel.distribute_train_step(
      functools.partial(train_step, hp=hp, learning_rate_fn=learning_rate_fn), mesh,
      donate_state=donate_state)

  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - start
  loop_unrolled = parts.unroll_factor(pgd_steps, unroll_attack) >= pgd_steps
  holder = {"state": state, "metrics": None}

  def one_step() -> None:
    holder["state"], holder["metrics"] = compiled(holder["state"], batch, rng)

  def synchronize() -> None:
    jax.block_until_ready((holder["state"], holder["metrics"]))

  return CompiledACTStep(
      step=one_step, synchronize=synchronize, compile_seconds=compile_seconds,
      xla_step_flops=cost_analysis_flops(compiled) if loop_unrolled else None, hyperparams=hp)
