"""ACT (Arani, Sarfraz and Zonooz, BMVC 2020): two models trained concurrently (ACT spec).

The natural model G learns on clean images and the robust model F on adversarial ones; each
learns from the labels and from the other's temperature-softened predictions.
"""

import dataclasses

import jax
import ml_collections
import optax

from act_jax import attacks, losses
from act_jax.methods.common import (
  AttackBudget,
  Batch,
  Metrics,
  global_batch_size,
  step_metrics,
  synced_update,
  train_mode_logits,
)
from act_jax.parallel import example_rngs
from act_jax.train_state import ACTState, create_act_state, eval_mode_logits

MODEL_NAMES = ("natural", "robust")


def forward_passes(num_attack_steps: int) -> int:
  """A step's work per example in forward-pass equivalents: two training passes (forward and
  backward, ~3 each) and K attack steps (a forward pass and an input gradient, ~2 each)."""
  return 6 + 2 * num_attack_steps


@dataclasses.dataclass(frozen=True)
class ACTHyperparams:
  """The scalars a step needs, frozen so that they can be static under jit.

  `attack` is the training attack's budget; how ACT's attack reduces its loss over the batch
  (`attack_loss_reduction`) is ACT's own.
  """
  natural_alpha: float
  robust_alpha: float
  temperature: float
  attack_loss_reduction: str
  attack: AttackBudget

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  attack: AttackBudget) -> "ACTHyperparams":
    return cls(natural_alpha=config.act.natural_alpha, robust_alpha=config.act.robust_alpha,
               temperature=config.act.temperature,
               attack_loss_reduction=config.attack.loss_reduction, attack=attack)


def train_step(state: ACTState, batch: Batch, rng: jax.Array, *, hp: ACTHyperparams,
               learning_rate_fn: optax.Schedule) -> tuple[ACTState, Metrics]:
  """One ACT step for both models, from one snapshot of both.

  1. G(x) in train mode. Its VJP is kept, so G's forward pass runs once and is reused for the
     attack's target, G's loss and G's backward pass.
  2. x' by the ACT attack on F in eval mode (running statistics, nothing updated).
  3. F(x') in train mode, L_F and its gradient; the natural logits enter only as a constant target.
  4. L_G from the natural logits and the (constant) adversarial logits, pulled back through G's VJP.
  5. Gradients averaged over the data axis, then each model takes its own optax update.
  """
  images, labels = batch["image"], batch["label"]
  natural, robust = state.natural, state.robust
  natural_logits, natural_vjp, natural_batch_stats = jax.vjp(
      lambda params: train_mode_logits(natural, params, images), natural.params, has_aux=True)
  natural_logits_target = jax.lax.stop_gradient(natural_logits)

  adversarial_images = attacks.act_training_attack(
      eval_mode_logits(robust), images, labels, natural_logits_target,
      example_rngs(rng, state.step, images.shape[0]), eps=hp.attack.eps,
      step_size=hp.attack.step_size, num_steps=hp.attack.num_steps, alpha=hp.robust_alpha,
      reduction=hp.attack_loss_reduction, global_batch_size=global_batch_size(images),
      unroll=hp.attack.unroll)

  def robust_loss_fn(params):
    logits, batch_stats = train_mode_logits(robust, params, adversarial_images)
    loss, metrics = losses.act_model_loss(logits, natural_logits_target, labels,
                                          alpha=hp.robust_alpha, temperature=hp.temperature)
    return loss, (logits, batch_stats, metrics)

  (_, (adversarial_logits, robust_batch_stats, robust_metrics)), robust_grads = (
      jax.value_and_grad(robust_loss_fn, has_aux=True)(robust.params))

  def natural_loss_fn(logits):
    return losses.act_model_loss(logits, adversarial_logits, labels, alpha=hp.natural_alpha,
                                 temperature=hp.temperature)

  (_, natural_metrics), natural_logits_grad = jax.value_and_grad(
      natural_loss_fn, has_aux=True)(natural_logits)
  (natural_grads,) = natural_vjp(natural_logits_grad)
  new_natural, natural_metrics = synced_update(natural, natural_grads, natural_batch_stats,
                                               natural_metrics)
  new_robust, robust_metrics = synced_update(robust, robust_grads, robust_batch_stats,
                                             robust_metrics)
  new_state = ACTState(natural=new_natural, robust=new_robust)
  return new_state, step_metrics(state.step, learning_rate_fn, natural=natural_metrics,
                                 robust=robust_metrics)


def models(state: ACTState) -> dict:
  return {"natural": state.natural, "robust": state.robust}


create_state = create_act_state
