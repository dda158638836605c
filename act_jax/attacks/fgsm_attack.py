"""The fast gradient sign method (Goodfellow et al.): the weakest first-order L-inf attack."""

import jax

from act_jax.attacks import objectives, parts


def fgsm(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array, *,
         eps: float) -> jax.Array:
  """One full-eps sign step on CE from x itself (no random start), clipped to [0, 1].

  It is PGD-1 from x with step eps, so it shares PGD's loop, objective, step and projection.
  """
  return parts.projected_sign_ascent(objectives.cross_entropy_objective(logits_fn, labels), images,
                                     parts.linf_projection(images, eps), step_size=eps,
                                     num_steps=1)
