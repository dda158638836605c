"""Target classes for targeted attacks, one per example, never the true class."""

import jax
import jax.numpy as jnp

# Folded into each example's key so target draws are independent of the start noise.
RANDOM_TARGET_SALT = 0x7A46


def _without_true_class(clean_logits: jax.Array, labels: jax.Array, fill: float) -> jax.Array:
  is_true = jax.nn.one_hot(labels, clean_logits.shape[-1], dtype=jnp.bool_)
  return jnp.where(is_true, fill, clean_logits.astype(jnp.float32))


def random_targets(example_rngs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A class drawn uniformly from the C - 1 wrong ones, from each example's own key."""

  def draw(key, label):
    offset = jax.random.randint(jax.random.fold_in(key, RANDOM_TARGET_SALT), (), 1, num_classes)
    return (label + offset) % num_classes

  return jax.vmap(draw)(example_rngs, labels).astype(labels.dtype)


def least_likely_targets(clean_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The class with the smallest clean logit, the true class excluded (Kurakin et al.)."""
  masked = _without_true_class(clean_logits, labels, jnp.inf)
  return jnp.argmin(masked, axis=-1).astype(labels.dtype)


def ranked_targets(clean_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[B, C - 1]: the wrong classes, most likely first by the clean logits (APGD-T's targets).

  Column k - 1 is the k-th most likely non-true class. The true class, pushed to -inf, sorts last
  and is dropped. Ties are broken by the lower class index, so the order is deterministic.
  """
  masked = _without_true_class(clean_logits, labels, -jnp.inf)
  order = jnp.argsort(-masked, axis=-1, stable=True)
  return order[:, :-1].astype(labels.dtype)


def targets_per_copy(ranked: jax.Array, copies: int) -> jax.Array:
  """The first `copies` ranked targets [B, C - 1] as one column for the batch repeated once per
  target (`parts.repeat_batch`): copy k attacks each example's k-th target."""
  return jnp.concatenate([ranked[:, k] for k in range(copies)])
