"""Natural (standard) training: cross-entropy on clean images, the no-defence baseline."""

import dataclasses

import jax
import ml_collections
import optax

from act_jax.methods.common import Batch, Metrics, cross_entropy_loss_fn, one_model_step
from act_jax.train_state import ModelState, init_model_state

MODEL_NAMES = ("natural",)


def forward_passes(num_attack_steps: int) -> int:
  """One training pass (forward and backward, ~3 forward-pass equivalents) per example."""
  del num_attack_steps
  return 3


@dataclasses.dataclass(frozen=True)
class NaturalHyperparams:
  """Natural training has no knobs of its own; the optimiser and schedule are shared."""

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "NaturalHyperparams":
    del config
    return cls()


def train_step(state: ModelState, batch: Batch, rng: jax.Array, *, hp: NaturalHyperparams,
               learning_rate_fn: optax.Schedule) -> tuple[ModelState, Metrics]:
  """One SGD step on CE(f(x), y) with f in train mode."""
  del rng, hp
  loss_fn = cross_entropy_loss_fn(state, batch["image"], batch["label"])
  return one_model_step(state, loss_fn, learning_rate_fn, "natural")


def models(state: ModelState) -> dict:
  return {"natural": state}


create_state = init_model_state
