"""Small, composable pieces that attacks are assembled from.

An attack here is: an initialiser (where x' starts), an objective (the scalar to ascend), a step
rule (how the gradient moves x') and a projection (back into the threat model). Keeping them
apart lets the ACT training attack, the evaluation PGD, FGSM and APGD share one set of pieces
instead of copies. Every piece acts on each example of the batch separately: per-example keys,
per-example norms and per-example step sizes, so an example's result never depends on the rest of
its batch or on how the batch is split across devices.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Objective = Callable[[jax.Array], jax.Array]
Projection = Callable[[jax.Array], jax.Array]
# (adversarial, gradient, step size: a float or one value per example) -> moved adversarial.
StepRule = Callable[[jax.Array, jax.Array, float | jax.Array], jax.Array]
NORMS = ("linf", "l2")


def check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"norm {norm!r}; allowed: {', '.join(NORMS)}")


def _per_example(sample, example_rngs: jax.Array, images: jax.Array) -> jax.Array:
  """Draws one sample per example, each from its own key.

  The noise of an example then depends only on its key, not on which device holds it or how
  many examples share that device, so a data-parallel run draws what a single device draws.
  """
  return jax.vmap(lambda key: sample(key, images.shape[1:], images.dtype))(example_rngs)


def per_example_keys(example_rngs: jax.Array, index: int | jax.Array) -> jax.Array:
  """Each example's key folded with `index`: fresh, still per-example noise for a restart."""
  return jax.vmap(lambda key: jax.random.fold_in(key, index))(example_rngs)


def target_keys(example_rngs: jax.Array, index: int | jax.Array) -> jax.Array:
  """The keys of an attack's run for target `index`: the examples' own keys for target 0,
  folded with the index for the others (APGD-T and FAB-T draw alike)."""
  if isinstance(index, int):
    return example_rngs if index == 0 else per_example_keys(example_rngs, index)
  return jax.lax.cond(index == 0, lambda: example_rngs,
                      lambda: per_example_keys(example_rngs, index))


def repeat_batch(x: jax.Array, copies: int) -> jax.Array:
  """The batch once per target, targets major: copy k holds rows [k B, (k + 1) B)."""
  return x if copies == 1 else jnp.concatenate([x] * copies)


def per_example_broadcast(scale: float | jax.Array, like: jax.Array) -> float | jax.Array:
  """Broadcasts a scalar, or one value or mask per example [B], against a batch `like` [B, ...]."""
  if jnp.ndim(scale) == 0:
    return scale
  return jnp.reshape(scale, (-1,) + (1,) * (like.ndim - 1))


def l2_norm(x: jax.Array) -> jax.Array:
  """The L2 norm of each example [B] over all its pixels and channels."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))))


def _safe_normalise(x: jax.Array) -> jax.Array:
  """x / ||x||_2 per example; an all-zero example stays zero instead of becoming NaN."""
  norm = l2_norm(x)
  return x / per_example_broadcast(jnp.where(norm > 0, norm, 1.0), x)


# Initialisers: where x' starts.


def gaussian_init(example_rngs: jax.Array, images: jax.Array, std: float) -> jax.Array:
  """x + std * N(0, I), deliberately not clipped: the ACT release starts its attack this way."""
  return images + std * _per_example(jax.random.normal, example_rngs, images)


def uniform_init(example_rngs: jax.Array, images: jax.Array, eps: float) -> jax.Array:
  """x + U(-eps, eps), clipped to the valid image range [0, 1]."""
  sample = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -eps, eps)
  return jnp.clip(images + _per_example(sample, example_rngs, images), 0.0, 1.0)


def l2_random_init(example_rngs: jax.Array, images: jax.Array, eps: float) -> jax.Array:
  """x + eps * u * d, d a uniformly random unit direction, u ~ U(0, 1); clipped to [0, 1].

  Clipping to [0, 1] only moves each pixel towards x, so the start stays in the L2 eps-ball.
  """

  def sample(key, shape, dtype):
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, (1, *shape), dtype)
    radius = eps * jax.random.uniform(radius_key, (), dtype)
    return radius * _safe_normalise(direction)[0]

  return jnp.clip(images + _per_example(sample, example_rngs, images), 0.0, 1.0)


def random_init(norm: str, example_rngs: jax.Array, images: jax.Array, eps: float) -> jax.Array:
  """The random start of `norm`'s threat model: uniform in the L-inf box, or the L2 start."""
  check_norm(norm)
  init = uniform_init if norm == "linf" else l2_random_init
  return init(example_rngs, images, eps)


# Projections: back into the threat model, then into the image range.


def linf_projection(images: jax.Array, eps: float) -> Projection:
  """Projects onto the L-inf ball of radius eps around `images`, then onto [0, 1]."""

  def project(adversarial: jax.Array) -> jax.Array:
    adversarial = jnp.clip(adversarial, images - eps, images + eps)
    return jnp.clip(adversarial, 0.0, 1.0)

  return project


def l2_projection(images: jax.Array, eps: float) -> Projection:
  """Projects onto the L2 ball of radius eps around each image, then onto [0, 1].

  A perturbation inside the ball is kept; one outside is scaled back to radius eps along its own
  direction. The clip afterwards moves each pixel towards the image, so it cannot leave the ball.
  """

  def project(adversarial: jax.Array) -> jax.Array:
    delta = adversarial - images
    norm = l2_norm(delta)
    scale = jnp.where(norm > eps, eps / jnp.where(norm > 0, norm, 1.0), 1.0)
    return jnp.clip(images + delta * per_example_broadcast(scale, delta), 0.0, 1.0)

  return project


def projection(norm: str, images: jax.Array, eps: float) -> Projection:
  """The projection of `norm`'s threat model around `images`."""
  check_norm(norm)
  return (linf_projection if norm == "linf" else l2_projection)(images, eps)


# Step rules: the steepest-ascent direction of each norm.


def sign_gradient_step(adversarial: jax.Array, gradient: jax.Array,
                       step_size: float | jax.Array) -> jax.Array:
  """The L-inf steepest-ascent step: x' + step_size * sign(grad)."""
  return adversarial + per_example_broadcast(step_size, adversarial) * jnp.sign(gradient)


def l2_gradient_step(adversarial: jax.Array, gradient: jax.Array,
                     step_size: float | jax.Array) -> jax.Array:
  """The L2 steepest-ascent step: x' + step_size * grad / ||grad||_2, per example.

  An example whose gradient is exactly zero stays where it is.
  """
  return adversarial + per_example_broadcast(step_size, adversarial) * _safe_normalise(gradient)


def step_rule(norm: str) -> StepRule:
  """The steepest-ascent step of `norm`'s threat model."""
  check_norm(norm)
  return sign_gradient_step if norm == "linf" else l2_gradient_step


# The loop.

MAX_UNROLL = 100
# On XLA:CPU a long unrolled attack is split into parts of at most this many iterations, each
# one call of the same compiled function (`apgd_attack.SteppedApgd`, `fab_attack.SteppedFab`,
# run so by the evaluator). Compiling an unrolled loop grows faster than its length: APGD-CE
# on the small CNN compiled in 5.5 s for 25 unrolled steps and in 70 s for 100, while running
# 1.0 s and 4.2 s. Four calls of 25 steps run as fast as 100 unrolled and compile 12x faster.
PART_STEPS = 25


class SteppedAttack(Protocol):
  """An attack as pure functions that the evaluator runs as separate compiled calls: `start`,
  `advance` once per element of `schedule_parts()`, then `adversarial`. The state between the
  calls (`carry`) holds only arrays whose leading axis is the (possibly repeated) batch."""
  num_steps: int

  def start(self, logits_fn: Callable, images: jax.Array, labels: jax.Array,
            example_rngs: jax.Array) -> dict[str, Any]: ...

  def advance(self, logits_fn: Callable, images: jax.Array, labels: jax.Array,
              carry: dict[str, Any], schedule: Any, *, unroll: bool) -> dict[str, Any]: ...

  def schedule_parts(self) -> list[Any]: ...

  def adversarial(self, logits_fn: Callable, images: jax.Array, labels: jax.Array,
                  carry: dict[str, Any]) -> jax.Array: ...


def part_lengths(num_steps: int) -> list[int]:
  """`num_steps` iterations in consecutive parts of at most `PART_STEPS`, differing in length
  by at most one, so that they need at most two compiled functions."""
  count = max(-(-num_steps // PART_STEPS), 1)
  return [len(piece) for piece in np.array_split(np.arange(num_steps), count)]


def unroll_factor(num_steps: int, unroll: bool) -> int:
  """How far to unroll a loop of `num_steps`: fully when `unroll` (up to 100 steps), else not.

  Callers ask for unrolling on XLA:CPU (`parallel.unrolls_attack_loops`), which runs
  convolutions inside a While body several times slower than the same convolutions in
  straight-line code (jax-ml/jax#12868). Measured on the Quickstart's small CNN, 200 images:
  PGD-100 took 36.8 s as a rolled loop and 6.2 s unrolled (compiling in 15 s instead of 0.7 s);
  unrolling by a factor of 10 does not help, since the body is still a While body (a
  Conditional's branch is as slow). Compiling grows faster than the unrolled length, so the
  evaluator runs APGD's and FAB's iterations as unrolled parts of at most `PART_STEPS`, each
  its own call (`apgd_attack.SteppedApgd`, `fab_attack.SteppedFab`). Beyond `MAX_UNROLL` steps
  the graph grows too large, so longer loops of one call stay rolled. On GPU and TPU the
  rolled loop is as fast and compiles in constant time.
  """
  if unroll and num_steps <= MAX_UNROLL:
    return max(num_steps, 1)
  return 1


def projected_ascent(objective: Objective, start: jax.Array, project: Projection,
                     step: Callable[[jax.Array, jax.Array], jax.Array], *,
                     num_steps: int, unroll: bool = False) -> jax.Array:
  """Runs `num_steps` of x' <- project(step(x', grad objective(x'))) in-graph.

  The loop is a `lax.fori_loop` with `jax.grad` inside, so the whole attack compiles into the
  surrounding step; `unroll` unrolls it (see `unroll_factor`). The result carries no gradient:
  attacks treat x' as a constant input.
  """
  gradient_fn = jax.grad(objective)

  def body(_, adversarial):
    return project(step(adversarial, gradient_fn(adversarial)))

  return jax.lax.stop_gradient(
      jax.lax.fori_loop(0, num_steps, body, start,
                        unroll=unroll_factor(num_steps, unroll)))


def projected_sign_ascent(objective: Objective, start: jax.Array, project: Projection, *,
                          step_size: float, num_steps: int, unroll: bool = False) -> jax.Array:
  """Runs `num_steps` of x' <- project(x' + step_size * sign(grad objective(x'))) in-graph."""
  step = lambda adversarial, gradient: sign_gradient_step(adversarial, gradient, step_size)
  return projected_ascent(objective, start, project, step, num_steps=num_steps,
                          unroll=unroll)


# Worst case over restarts and iterates.


class Candidate(NamedTuple):
  """Adversarial points [B, ...], their attack losses [B] and whether each is misclassified [B]."""
  adversarial: jax.Array
  loss: jax.Array
  wrong: jax.Array


def keep_worst_case(best: Candidate, candidate: Candidate) -> Candidate:
  """Per example, the worse (for the model) of `best` and `candidate`.

  A misclassified point beats a correctly classified one whatever the losses: robust accuracy
  only counts misclassification, and the loss merely orders points that agree on it. Ties keep
  `best`, so the earliest of equal points is kept.
  """
  take = ((candidate.wrong & ~best.wrong)
          | ((candidate.wrong == best.wrong) & (candidate.loss > best.loss)))
  return Candidate(
      jnp.where(per_example_broadcast(take, best.adversarial), candidate.adversarial,
                best.adversarial),
      jnp.where(take, candidate.loss, best.loss),
      jnp.where(take, candidate.wrong, best.wrong))


def worst_case_over_copies(found: Candidate, batch: int) -> Candidate:
  """The per-example worst case over the copies of a batch repeated once per target
  (`repeat_batch`); ties keep the earlier target."""
  copies = [jax.tree.map(lambda x, k=k: x[k * batch:(k + 1) * batch], found)
            for k in range(found.adversarial.shape[0] // batch)]
  return functools.reduce(keep_worst_case, copies)


def worst_case_over_runs(run: Callable[[jax.Array, jax.Array], Candidate], example_rngs: jax.Array,
                         num_runs: int) -> Candidate:
  """The per-example worst case of `run(index, keys)` over `num_runs` runs (e.g. restarts).

  Run 0 gets `example_rngs` as they are, so a single run is exactly the attack without restarts;
  run i > 0 gets every key folded with i. Runs after the first are a rolled `lax.fori_loop`, so the
  compiled size does not grow with their number.
  """
  if num_runs < 1:
    raise ValueError(f"number of runs (restarts) {num_runs}; must be at least 1")
  best = run(jnp.asarray(0), example_rngs)
  if num_runs == 1:
    return best

  def body(index, best):
    return keep_worst_case(best, run(index, per_example_keys(example_rngs, index)))

  return jax.lax.fori_loop(1, num_runs, body, best)
