"""Scalar objectives that attacks ascend.

Each objective is built from a `logits_fn(images) -> logits` closure, so it does not care which
model, mode or dtype produced the logits. All are sums or means over the batch of per-example
terms; since every example's loss depends only on its own input, the gradient for each example
is independent of the rest of the batch (and of how the batch is split across devices).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from act_jax import losses

LogitsFn = Callable[[jax.Array], jax.Array]
ATTACK_LOSS_REDUCTIONS = ("reference", "mean")


def cross_entropy_objective(logits_fn: LogitsFn, labels: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """Summed CE: the untargeted PGD objective (sign steps make sum and mean equivalent)."""

  def objective(images: jax.Array) -> jax.Array:
    logits = logits_fn(images).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

  return objective


def act_objective(logits_fn: LogitsFn, labels: jax.Array, natural_logits: jax.Array, *, alpha: float,
                  reduction: str, global_batch_size: int) -> Callable[[jax.Array], jax.Array]:
  """The ACT inner-maximisation loss (ACT spec, step 2).

  "reference": (1 - alpha) * CE_mean + alpha * KL_sum, exactly as the release: CE is averaged over
    the batch but KL (temperature 1, no T^2) is summed, so each example's CE weight is
    (1 - alpha) / B and the attack is driven almost entirely by the KL to the natural model.
  "mean": (1 - alpha) * CE_mean + alpha * KL_mean, the balanced variant.

  B is the *global* batch size: the mean is taken as a sum divided by it, so a data-parallel
  replica that sees B / n examples computes exactly the single-device attack.
  """
  if reduction not in ATTACK_LOSS_REDUCTIONS:
    raise ValueError(f"attack loss reduction {reduction!r}; allowed: {', '.join(ATTACK_LOSS_REDUCTIONS)}")
  kl_weight = alpha if reduction == "reference" else alpha / global_batch_size

  def objective(images: jax.Array) -> jax.Array:
    logits = logits_fn(images).astype(jnp.float32)
    ce_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    kl_sum = losses.per_example_kl(logits, natural_logits).sum()
    return (1.0 - alpha) * ce_sum / global_batch_size + kl_weight * kl_sum

  return objective
