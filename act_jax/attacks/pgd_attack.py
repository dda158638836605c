"""Projected gradient descent (Madry et al.): L-inf or L2 threat model, untargeted or targeted."""

import jax
import jax.numpy as jnp

from act_jax.attacks import objectives, parts
from act_jax.attacks import targets as targets_lib
from act_jax.attacks.act_attack import ACT_INIT_STD

INITS = ("none", "uniform", "gaussian")
TARGET_MODES = ("random", "least_likely")
# A targeted attack ascends the targeted form of the chosen loss.
TARGETED_FORM = {"ce": "targeted_ce", "dlr": "targeted_dlr"}


def _start(init: str, norm: str, example_rngs: jax.Array, images: jax.Array, eps: float,
           project: parts.Projection) -> jax.Array:
  """Where a run starts. Every start lies in the threat model and in [0, 1]."""
  if init == "none":
    return images
  if init == "uniform":
    return parts.random_init(norm, example_rngs, images, eps)
  # ACT's small Gaussian start, projected so the model is never queried outside the threat model.
  return project(parts.gaussian_init(example_rngs, images, ACT_INIT_STD))


def _targets(target: str, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
             example_rngs: jax.Array) -> jax.Array:
  clean_logits = jax.lax.stop_gradient(logits_fn(images))
  if target == "random":
    return targets_lib.random_targets(example_rngs, labels, clean_logits.shape[-1])
  return targets_lib.least_likely_targets(clean_logits, labels)


def pgd(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
        example_rngs: jax.Array, *, eps: float, step_size: float, num_steps: int,
        norm: str = "linf", loss: str = "ce", target: str | None = None, init: str = "uniform",
        restarts: int = 1, unroll: bool = False) -> jax.Array:
  """PGD-K: `num_steps` steepest-ascent steps on `loss`, each projected onto the threat model.

  norm: "linf" (sign steps, box projection) or "l2" (normalised-gradient steps, ball projection).
  loss: an untargeted loss of `objectives.LOSSES` ("ce", "cw_margin", "dlr").
  target: None for untargeted; "random" (a wrong class drawn from each example's key) or
    "least_likely" (the wrong class of smallest clean logit) ascend the targeted form of `loss`
    ("ce" -> targeted_ce, "dlr" -> targeted_dlr). Success still means "misclassified".
  init: "none" (start at x), "uniform" (the norm's random start: uniform in the L-inf box, or a
    random direction at a uniform radius for L2), "gaussian" (x + 0.001 N(0, I), as ACT trains).
  restarts: independent runs, each from its own start; per example the worst case is returned
    (a misclassified final point if any run ends misclassified, else the one of highest loss).
    Each run returns its last iterate, as Madry et al.'s PGD.
  unroll: unroll the step loop (see `parts.unroll_factor`).

  `example_rngs` holds one key per example; `logits_fn` should run the model in eval mode.
  The result carries no gradient.
  """
  parts.check_norm(norm)
  if init not in INITS:
    raise ValueError(f"attack init {init!r}; allowed: {', '.join(INITS)}")
  if target is None:
    loss_fn = objectives.check_loss(loss, objectives.UNTARGETED_LOSSES)
    attack_targets = None
  else:
    if target not in TARGET_MODES:
      raise ValueError(f"attack target {target!r}; allowed: None, {', '.join(TARGET_MODES)}")
    if loss not in TARGETED_FORM:
      raise ValueError(f"targeted attack loss {loss!r}; allowed: {', '.join(TARGETED_FORM)}")
    loss_fn = objectives.LOSSES[TARGETED_FORM[loss]]
    attack_targets = _targets(target, logits_fn, images, labels, example_rngs)

  project = parts.projection(norm, images, eps)
  step_rule = parts.step_rule(norm)
  step = lambda adversarial, gradient: step_rule(adversarial, gradient, step_size)
  objective = objectives.summed_objective(logits_fn, loss_fn, labels, attack_targets)

  def run(_, keys: jax.Array) -> parts.Candidate:
    start = _start(init, norm, keys, images, eps, project)
    adversarial = parts.projected_ascent(objective, start, project, step, num_steps=num_steps,
                                         unroll=unroll)
    logits = logits_fn(adversarial).astype(jnp.float32)
    return parts.Candidate(adversarial, loss_fn(logits, labels, attack_targets),
                           objectives.misclassified(logits, labels))

  return parts.worst_case_over_runs(run, example_rngs, restarts).adversarial
