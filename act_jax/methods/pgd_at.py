"""PGD adversarial training (Madry et al., ICLR 2018): cross-entropy on PGD examples only.

The attack starts uniformly in the eps-ball (clipped to [0, 1]) and takes K sign steps on the
cross-entropy, each projected onto the eps-ball and [0, 1]. It runs with the model in eval mode
(running BatchNorm statistics, nothing updated), as ACT and TRADES run theirs; Madry et al.'s
own code predates that distinction and attacked the model as it trained. The loss is then
CE(f(x'), y) with f in train mode.
"""

import dataclasses

import jax
import ml_collections
import optax

from act_jax import attacks
from act_jax.methods.common import (
  AttackBudget,
  Batch,
  Metrics,
  cross_entropy_loss_fn,
  one_model_step,
)
from act_jax.parallel import example_rngs
from act_jax.train_state import ModelState, eval_mode_logits, init_model_state

MODEL_NAMES = ("robust",)


def forward_passes(num_attack_steps: int) -> int:
  """K attack steps (~2 forward-pass equivalents each) and one training pass (~3)."""
  return 3 + 2 * num_attack_steps


@dataclasses.dataclass(frozen=True)
class PGDATHyperparams:
  """PGD-AT's only hyperparameters are its attack's budget."""
  attack: AttackBudget

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  attack: AttackBudget) -> "PGDATHyperparams":
    del config
    return cls(attack=attack)


def adversarial_examples(state: ModelState, images: jax.Array, labels: jax.Array,
                         keys: jax.Array, budget: AttackBudget) -> jax.Array:
  """Madry et al.'s PGD-K on CE from a uniform start, with the model in eval mode."""
  return attacks.pgd(eval_mode_logits(state), images, labels, keys, eps=budget.eps,
                     step_size=budget.step_size, num_steps=budget.num_steps, loss="ce",
                     init="uniform", unroll=budget.unroll)


def train_step(state: ModelState, batch: Batch, rng: jax.Array, *, hp: PGDATHyperparams,
               learning_rate_fn: optax.Schedule) -> tuple[ModelState, Metrics]:
  """One SGD step on CE(f(x'), y), x' crafted against the current model."""
  images, labels = batch["image"], batch["label"]
  adversarial = adversarial_examples(state, images, labels,
                                     example_rngs(rng, state.step, images.shape[0]), hp.attack)
  return one_model_step(state, cross_entropy_loss_fn(state, adversarial, labels),
                        learning_rate_fn, "robust")


def models(state: ModelState) -> dict:
  return {"robust": state}


create_state = init_model_state
