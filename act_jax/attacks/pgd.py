"""White-box L-inf PGD used to evaluate both models (ACT spec, "Evaluation")."""

import jax

from act_jax.attacks import objectives, parts


def pgd_linf(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array, example_rngs: jax.Array, *,
             eps: float, step_size: float, num_steps: int) -> jax.Array:
  """Untargeted PGD-K on CE from a uniform random start in the eps-ball (Madry et al.).

  `example_rngs` holds one key per example. `logits_fn` should run the model in eval mode. The start is clipped to [0, 1] so that the
  model is never queried outside the image domain.
  """
  start = parts.uniform_init(example_rngs, images, eps)
  return parts.projected_sign_ascent(objectives.cross_entropy_objective(logits_fn, labels), start,
                                     parts.linf_projection(images, eps), step_size=step_size,
                                     num_steps=num_steps)
