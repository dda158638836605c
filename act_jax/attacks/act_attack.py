"""The adversary ACT trains its robust model against (ACT spec, step 2)."""

import jax

from act_jax.attacks import objectives, parts

ACT_INIT_STD = 0.001


def act_training_attack(robust_logits_fn: objectives.LogitsFn, images: jax.Array,
                        labels: jax.Array, natural_logits: jax.Array, example_rngs: jax.Array, *,
                        eps: float, step_size: float, num_steps: int, alpha: float, reduction: str,
                        global_batch_size: int, unroll: bool = False) -> jax.Array:
  """Crafts x' for the robust model F.

  `robust_logits_fn` must run F in eval mode (running BatchNorm statistics, no update): the
  attack must neither see batch statistics of x' nor pollute F's running averages, as in the
  release's `model.eval()` around its attack. `example_rngs` holds one key per example. x' starts
  at x + 0.001 * N(0, I), then takes `num_steps` sign steps on `objectives.act_objective`, each
  projected onto the eps-ball and [0, 1]; `unroll` unrolls that loop (`parts.unroll_factor`).
  """
  objective = objectives.act_objective(robust_logits_fn, labels, natural_logits, alpha=alpha,
                                       reduction=reduction, global_batch_size=global_batch_size)
  start = parts.gaussian_init(example_rngs, images, ACT_INIT_STD)
  return parts.projected_sign_ascent(objective, start, parts.linf_projection(images, eps),
                                     step_size=step_size, num_steps=num_steps, unroll=unroll)
