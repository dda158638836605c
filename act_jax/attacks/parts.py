"""Small, composable pieces that attacks are assembled from.

An attack here is: an initialiser (where x' starts), an objective (the scalar to ascend), a step
rule (how the gradient moves x') and a projection (back into the threat model). Keeping them
apart lets the ACT training attack and the evaluation PGD share one loop instead of two copies.
"""

from typing import Callable

import jax
import jax.numpy as jnp

Objective = Callable[[jax.Array], jax.Array]
Projection = Callable[[jax.Array], jax.Array]


def _per_example(sample, example_rngs: jax.Array, images: jax.Array) -> jax.Array:
  """Draws one sample per example, each from its own key.

  The noise of an example then depends only on its key, not on which device holds it or how
  many examples share that device, so a data-parallel run draws what a single device draws.
  """
  return jax.vmap(lambda key: sample(key, images.shape[1:], images.dtype))(example_rngs)


def gaussian_init(example_rngs: jax.Array, images: jax.Array, std: float) -> jax.Array:
  """x + std * N(0, I), deliberately not clipped: the ACT release starts its attack this way."""
  return images + std * _per_example(jax.random.normal, example_rngs, images)


def uniform_init(example_rngs: jax.Array, images: jax.Array, eps: float) -> jax.Array:
  """x + U(-eps, eps), clipped to the valid image range [0, 1]."""
  sample = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -eps, eps)
  return jnp.clip(images + _per_example(sample, example_rngs, images), 0.0, 1.0)


def linf_projection(images: jax.Array, eps: float) -> Projection:
  """Projects onto the L-inf ball of radius eps around `images`, then onto [0, 1]."""

  def project(adversarial: jax.Array) -> jax.Array:
    adversarial = jnp.clip(adversarial, images - eps, images + eps)
    return jnp.clip(adversarial, 0.0, 1.0)

  return project


def sign_gradient_step(adversarial: jax.Array, gradient: jax.Array, step_size: float) -> jax.Array:
  """The L-inf steepest-ascent step: x' + step_size * sign(grad)."""
  return adversarial + step_size * jnp.sign(gradient)


MAX_CPU_UNROLL = 32


def loop_unroll(num_steps: int) -> int:
  """How far to unroll the attack loop: fully on CPU (for short attacks), not at all elsewhere.

  XLA:CPU runs convolutions inside a While body several times slower than the same convolutions
  in straight-line code (jax-ml/jax#12868; measured 2.7x for the ACT attack on the small CNN),
  so on CPU the `fori_loop` is unrolled. On GPU and TPU the rolled loop is as fast and compiles
  in constant time.
  """
  if jax.default_backend() == "cpu" and num_steps <= MAX_CPU_UNROLL:
    return max(num_steps, 1)
  return 1


def projected_sign_ascent(objective: Objective, start: jax.Array, project: Projection, *,
                          step_size: float, num_steps: int) -> jax.Array:
  """Runs `num_steps` of x' <- project(x' + step_size * sign(grad objective(x'))) in-graph.

  The loop is a `lax.fori_loop` with `jax.grad` inside, so the whole attack compiles into the
  surrounding step. The result carries no gradient: ACT treats x' as a constant input.
  """
  gradient_fn = jax.grad(objective)

  def body(_, adversarial):
    return project(sign_gradient_step(adversarial, gradient_fn(adversarial), step_size))

  return jax.lax.stop_gradient(
      jax.lax.fori_loop(0, num_steps, body, start, unroll=loop_unroll(num_steps)))
