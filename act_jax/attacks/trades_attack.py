"""The adversary TRADES trains against (Zhang et al., ICML 2019, as in their official code)."""

import jax

from act_jax.attacks import objectives, parts
from act_jax.attacks.act_attack import ACT_INIT_STD

TRADES_INIT_STD = ACT_INIT_STD  # both releases start at x + 0.001 N(0, I)


def trades_training_attack(logits_fn: objectives.LogitsFn, images: jax.Array,
                           example_rngs: jax.Array, *, eps: float, step_size: float,
                           num_steps: int, unroll: bool = False) -> jax.Array:
  """x' maximising the KL between the model's predictions on x' and on x.

  `logits_fn` must run the model in eval mode, as the official code's `model.eval()` around
  the attack. x' starts at x + 0.001 * N(0, I) (not clipped), then takes `num_steps` sign
  steps on `objectives.trades_objective`, each projected onto the L-inf eps-ball and [0, 1].
  Labels play no part: TRADES' adversary pushes the prediction away from the clean one.
  """
  objective = objectives.trades_objective(logits_fn, logits_fn(images))
  start = parts.gaussian_init(example_rngs, images, TRADES_INIT_STD)
  return parts.projected_sign_ascent(objective, start, parts.linf_projection(images, eps),
                                     step_size=step_size, num_steps=num_steps, unroll=unroll)
