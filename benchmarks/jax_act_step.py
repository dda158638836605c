"""The act_jax ACT step as `throughput` times it: the training code path.

The run is built by `act_jax.experiment`, as training builds it, and its step runs under
`parallel.distribute_train_step` (shard_map in jit, donated state) on a mesh of the given
devices, with the workload's recipe and synthetic data created on the devices. Training also
gathers its batch inside the step; `benchmarks.loop_throughput` measures that part.
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from act_jax import experiment, models, parallel
from act_jax.attacks import parts
from act_jax.data.catalog import DatasetInfo
from act_jax.methods.act import ACTHyperparams
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
  """Builds the run as training does (`act_jax.experiment`), its state and a batch on
  `devices`, compiles the step (timed) and returns it.

  With several devices the batch is split over them, as in data-parallel training, and
  BatchNorm synchronises as the recipe says; over one device it is plain BatchNorm, as in
  training. `unroll_attack` None unrolls the attack where training would (on CPU); the
  variants benchmark sets it, and `donate_state`, to measure what each choice is worth.
  """
  config = workload.recipe()
  config.model.dtype = jnp.dtype(model_dtype).name
  config.attack.num_steps = pgd_steps
  config.train.batch_size = batch_size
  mesh = parallel.make_mesh(devices)
  info = DatasetInfo(name=workload.config, num_classes=workload.num_classes,
                     image_shape=workload.image_shape, num_train=0, num_test=0)
  exp = experiment.build(config, mesh, info, steps_per_epoch=STEPS_PER_EPOCH,
                         unroll_attack=unroll_attack)
  state = exp.initial_state(jax.random.PRNGKey(0))
  batch = synthetic_batch(workload, batch_size, NamedSharding(mesh, parallel.SHARDED))
  rng = parallel.replicate(jax.random.PRNGKey(2), mesh)
  step = parallel.distribute_train_step(exp.train_step(), mesh, donate_state=donate_state)

  start = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_seconds = time.perf_counter() - start
  loop_unrolled = parts.unroll_factor(pgd_steps, exp.hyperparams.attack.unroll) >= pgd_steps
  holder = {"state": state, "metrics": None}

  def one_step() -> None:
    holder["state"], holder["metrics"] = compiled(holder["state"], batch, rng)

  def synchronize() -> None:
    jax.block_until_ready((holder["state"], holder["metrics"]))

  return CompiledACTStep(
      step=one_step, synchronize=synchronize, compile_seconds=compile_seconds,
      xla_step_flops=cost_analysis_flops(compiled) if loop_unrolled else None,
      hyperparams=exp.hyperparams)
