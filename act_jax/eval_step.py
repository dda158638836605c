"""The per-device evaluation step: clean and PGD accuracy of both ACT models (ACT spec, "Evaluation")."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from act_jax import attacks
from act_jax.train_state import ACTState
from act_jax.train_step import DATA_AXIS, Batch, Metrics, eval_mode_logits, example_rngs


@dataclasses.dataclass(frozen=True)
class EvalAttack:
  """The white-box L-inf PGD used for evaluation (PGD-20, uniform start, CE)."""
  eps: float
  step_size: float
  num_steps: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "EvalAttack":
    return cls(eps=config.eval.eps, step_size=config.eval.step_size,
               num_steps=config.eval.num_steps)


def eval_step(state: ACTState, batch: Batch, rng: jax.Array, *, model: nn.Module,
              attack: EvalAttack) -> Metrics:
  """Counts correct predictions of each model on clean and on its own PGD examples.

  Both models are attacked and evaluated in eval mode. Returns global sums (psum over
  `DATA_AXIS`) so the host only divides by `count`; padded examples carry mask 0.
  """
  images, labels, mask = batch["image"], batch["label"], batch["mask"]
  counts = {"count": jnp.sum(mask)}
  for name, model_state, model_rng in (("natural", state.natural, 0), ("robust", state.robust, 1)):
    logits_fn = eval_mode_logits(model, model_state.params, model_state.batch_stats)
    adversarial = attacks.pgd_linf(logits_fn, images, labels,
                                   example_rngs(jax.random.fold_in(rng, model_rng), state.step,
                                                images.shape[0]),
                                   eps=attack.eps, step_size=attack.step_size,
                                   num_steps=attack.num_steps)
    for kind, inputs in (("clean", images), ("pgd", adversarial)):
      correct = jnp.argmax(logits_fn(inputs), axis=-1) == labels
      counts[f"{name}/{kind}_correct"] = jnp.sum(correct * mask)
  return jax.lax.psum(counts, DATA_AXIS)
