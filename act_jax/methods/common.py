"""What every training method's per-device step shares: the train-mode pass and the update.

A method's step is a pure per-device function `(state, batch, rng) -> (state, metrics)` that
knows one axis name, `parallel.DATA_AXIS`; `parallel.distribute_train_step` runs it under
`jax.shard_map` inside `jax.jit` for one device, many devices and many hosts alike.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from act_jax import losses
from act_jax.parallel import DATA_AXIS
from act_jax.train_state import ModelState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class AttackBudget:
  """The training attack's budget, `config.attack`: one place for every adversarial method.

  PGD-AT, TRADES and ACT differ in the attack's start and objective, never in its budget: an
  L-inf radius `eps`, `num_steps` sign steps of `step_size`. Frozen, so that it can be static
  under jit. `unroll` only changes how the attack loop compiles: the caller decides from the
  backend (`parallel.unrolls_attack_loops`); it does not change what the step computes.
  """
  eps: float
  step_size: float
  num_steps: int
  unroll: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, unroll: bool) -> "AttackBudget":
    return cls(eps=config.attack.eps, step_size=config.attack.step_size,
               num_steps=config.attack.num_steps, unroll=unroll)


def global_batch_size(images: jax.Array) -> int:
  """The batch over all devices; attack objectives normalise by it, never by the shard."""
  return images.shape[0] * jax.lax.axis_size(DATA_AXIS)


def train_mode_logits(model_state: ModelState, params: Any, images: jax.Array,
                      batch_stats: Any = None) -> tuple[jax.Array, Any]:
  """Logits in train mode (BatchNorm on this batch's statistics) and the updated running stats.

  `batch_stats` defaults to the state's own; a method that runs several train-mode passes in a
  row passes each pass the statistics the previous one left, as PyTorch's BatchNorm does.
  """
  stats = model_state.batch_stats if batch_stats is None else batch_stats
  logits, mutated = model_state.apply_fn({"params": params, "batch_stats": stats}, images,
                                         train=True, mutable=["batch_stats"])
  return logits, mutated["batch_stats"]


def all_finite(tree: Any) -> jax.Array:
  """Whether every value of every array in `tree` is finite (no NaN, no inf)."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def synced_update(model_state: ModelState, grads: Any, batch_stats: Any, metrics: Metrics
                  ) -> tuple[ModelState, Metrics]:
  """Averages gradients and running statistics over `DATA_AXIS`, then takes one optax step.

  Averaging the statistics is a no-op with synchronised BatchNorm; with per-device BatchNorm
  it keeps the replicated state identical on every device. `metrics` gain "grads_finite":
  1 when every averaged gradient is finite, which the loop checks before it saves a state.
  """
  grads, batch_stats = jax.lax.pmean((grads, batch_stats), DATA_AXIS)
  finite = all_finite(grads).astype(jnp.float32)
  return (model_state.apply_gradients(grads=grads, batch_stats=batch_stats),
          {**metrics, "grads_finite": finite})


def cross_entropy_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, Metrics]:
  """CE(logits, y) as a loss, with the metrics every CE-trained model logs."""
  ce = losses.cross_entropy(logits, labels)
  return ce, {"loss": ce, "ce": ce, "accuracy": losses.accuracy(logits, labels)}


def step_metrics(state_step: jax.Array, learning_rate_fn: optax.Schedule,
                 **per_model: Metrics) -> Metrics:
  """`<model>/<name>` for every model's metrics and the learning rate, averaged over devices."""
  metrics = {f"{model}/{name}": value for model, values in per_model.items()
             for name, value in values.items()}
  metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state_step), jnp.float32)
  return jax.lax.pmean(metrics, DATA_AXIS)


# params -> (loss, (running BatchNorm statistics after the step's train-mode passes, metrics))
LossFn = Callable[[Any], tuple[jax.Array, tuple[Any, Metrics]]]


def cross_entropy_loss_fn(model_state: ModelState, images: jax.Array,
                          labels: jax.Array) -> LossFn:
  """CE(f(images), y) with f in train mode: natural training's loss, and PGD-AT's on x'."""
  def loss_fn(params):
    logits, batch_stats = train_mode_logits(model_state, params, images)
    loss, metrics = cross_entropy_metrics(logits, labels)
    return loss, (batch_stats, metrics)
  return loss_fn


def one_model_step(model_state: ModelState, loss_fn: LossFn, learning_rate_fn: optax.Schedule,
                   model_name: str) -> tuple[ModelState, Metrics]:
  """The step of a one-model method once its loss is built: differentiate, sync, update, log."""
  (_, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      model_state.params)
  new_state, metrics = synced_update(model_state, grads, batch_stats, metrics)
  return new_state, step_metrics(model_state.step, learning_rate_fn, **{model_name: metrics})
