"""The per-device ACT train step (ACT spec, "One training step").

The step is written for one device holding a shard of the global batch. It knows a single
named axis, `parallel.DATA_AXIS`, over which it averages gradients and metrics; BatchNorm may
also reduce over it. `parallel` runs it under `jax.shard_map` on a device mesh, also when there
is one device.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from act_jax import attacks, losses
from act_jax.parallel import DATA_AXIS, example_rngs
from act_jax.train_state import ACTState, eval_mode_logits

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ACTHyperparams:
  """The scalars a step needs, frozen so that they can be static under jit.

  `unroll_attack` unrolls the attack loop: the caller decides from the backend
  (`parallel.unrolls_attack_loops`); it does not change what the step computes.
  """
  natural_alpha: float
  robust_alpha: float
  temperature: float
  eps: float
  step_size: float
  num_steps: int
  attack_loss_reduction: str
  unroll_attack: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  unroll_attack: bool = False) -> "ACTHyperparams":
    return cls(natural_alpha=config.act.natural_alpha, robust_alpha=config.act.robust_alpha,
               temperature=config.act.temperature, eps=config.attack.eps,
               step_size=config.attack.step_size, num_steps=config.attack.num_steps,
               attack_loss_reduction=config.attack.loss_reduction, unroll_attack=unroll_attack)


def train_step(state: ACTState, batch: Batch, rng: jax.Array, *, hp: ACTHyperparams,
               learning_rate_fn: optax.Schedule) -> tuple[ACTState, Metrics]:
  """One ACT step for both models, from one snapshot of both.

  1. G(x) in train mode. Its VJP is kept, so G's forward pass runs once and is reused for the
     attack's target, G's loss and G's backward pass.
  2. x' by the ACT attack on F in eval mode (running statistics, nothing updated).
  3. F(x') in train mode, L_F and its gradient; the natural logits enter only as a constant target.
  4. L_G from the natural logits and the (constant) adversarial logits, pulled back through G's VJP.
  5. Gradients averaged over `DATA_AXIS`, then each model takes its own optax update.
  """
  images, labels = batch["image"], batch["label"]
  global_batch_size = images.shape[0] * jax.lax.axis_size(DATA_AXIS)
  natural, robust = state.natural, state.robust

  def natural_forward(params):
    logits, mutated = natural.apply_fn({"params": params, "batch_stats": natural.batch_stats},
                                       images, train=True, mutable=["batch_stats"])
    return logits, mutated["batch_stats"]

  natural_logits, natural_vjp, natural_batch_stats = jax.vjp(natural_forward, natural.params,
                                                             has_aux=True)
  natural_logits_target = jax.lax.stop_gradient(natural_logits)

  adversarial_images = attacks.act_training_attack(
      eval_mode_logits(robust), images, labels, natural_logits_target,
      example_rngs(rng, state.step, images.shape[0]), eps=hp.eps, step_size=hp.step_size,
      num_steps=hp.num_steps, alpha=hp.robust_alpha, reduction=hp.attack_loss_reduction,
      global_batch_size=global_batch_size, unroll=hp.unroll_attack)

  def robust_loss_fn(params):
    logits, mutated = robust.apply_fn({"params": params, "batch_stats": robust.batch_stats},
                                      adversarial_images, train=True, mutable=["batch_stats"])
    loss, metrics = losses.act_model_loss(logits, natural_logits_target, labels,
                                          alpha=hp.robust_alpha, temperature=hp.temperature)
    return loss, (logits, mutated["batch_stats"], metrics)

  (_, (adversarial_logits, robust_batch_stats, robust_metrics)), robust_grads = (
      jax.value_and_grad(robust_loss_fn, has_aux=True)(robust.params))

  def natural_loss_fn(logits):
    return losses.act_model_loss(logits, adversarial_logits, labels, alpha=hp.natural_alpha,
                                 temperature=hp.temperature)

  (_, natural_metrics), natural_logits_grad = jax.value_and_grad(
      natural_loss_fn, has_aux=True)(natural_logits)
  (natural_grads,) = natural_vjp(natural_logits_grad)

  # Running statistics are averaged too: a no-op with synchronised BN, and with per-device BN
  # it keeps the replicated state identical on every device.
  natural_grads, robust_grads, natural_batch_stats, robust_batch_stats = jax.lax.pmean(
      (natural_grads, robust_grads, natural_batch_stats, robust_batch_stats), DATA_AXIS)
  new_state = ACTState(
      natural=natural.apply_gradients(grads=natural_grads, batch_stats=natural_batch_stats),
      robust=robust.apply_gradients(grads=robust_grads, batch_stats=robust_batch_stats))
  metrics = {**{f"natural/{k}": v for k, v in natural_metrics.items()},
             **{f"robust/{k}": v for k, v in robust_metrics.items()},
             "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32)}
  return new_state, jax.lax.pmean(metrics, DATA_AXIS)
