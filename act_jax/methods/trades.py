"""TRADES (Zhang et al., ICML 2019), as its official code trains.

The attack: eval mode, start at x + 0.001 N(0, I), K sign steps on the summed KL between the
predictions on x' and on x, each projected onto the eps-ball and [0, 1]. The loss, in train
mode: CE(f(x), y) + beta / B * sum_batch KL(softmax(f(x)) || softmax(f(x'))), with gradients
through both terms and through both arguments of the KL.

The official code computes f(x) twice in train mode, once for the CE and once inside the KL.
Both passes see the same parameters and batch, so their logits and gradients are the same as
one pass used twice, which is what runs here. What the second pass does change is BatchNorm's
running statistics: they are updated three times per step, with x, x' and x again. Those
statistics drive the eval-mode attack and every evaluation, so that sequence is kept: a third
train-mode pass on x runs for its statistics only (no gradient flows through it).
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
  one_model_step,
  train_mode_logits,
)
from act_jax.parallel import example_rngs
from act_jax.train_state import ModelState, eval_mode_logits, init_model_state

MODEL_NAMES = ("robust",)


def forward_passes(num_attack_steps: int) -> int:
  """The clean target (1), K attack steps (2 each), training passes on x and x' (3 each) and
  the statistics-only pass on x (1), in forward-pass equivalents per example."""
  return 8 + 2 * num_attack_steps


@dataclasses.dataclass(frozen=True)
class TradesHyperparams:
  """beta weighs the robustness (KL) term; `attack` is the training attack's budget."""
  beta: float
  attack: AttackBudget

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  attack: AttackBudget) -> "TradesHyperparams":
    return cls(beta=config.trades.beta, attack=attack)


def adversarial_examples(state: ModelState, images: jax.Array, keys: jax.Array,
                         budget: AttackBudget) -> jax.Array:
  return attacks.trades_training_attack(eval_mode_logits(state), images, keys, eps=budget.eps,
                                        step_size=budget.step_size, num_steps=budget.num_steps,
                                        unroll=budget.unroll)


def train_step(state: ModelState, batch: Batch, rng: jax.Array, *, hp: TradesHyperparams,
               learning_rate_fn: optax.Schedule) -> tuple[ModelState, Metrics]:
  """One SGD step on the TRADES loss, x' crafted against the current model."""
  images, labels = batch["image"], batch["label"]
  adversarial = adversarial_examples(state, images,
                                     example_rngs(rng, state.step, images.shape[0]), hp.attack)

  def loss_fn(params):
    clean_logits, after_clean = train_mode_logits(state, params, images)
    adversarial_logits, after_adversarial = train_mode_logits(state, params, adversarial,
                                                              after_clean)
    _, after_second_clean = train_mode_logits(state, jax.lax.stop_gradient(params), images,
                                              after_adversarial)
    loss, metrics = losses.trades_loss(clean_logits, adversarial_logits, labels, beta=hp.beta)
    return loss, (after_second_clean, metrics)

  return one_model_step(state, loss_fn, learning_rate_fn, "robust")


def models(state: ModelState) -> dict:
  return {"robust": state}


create_state = init_model_state
