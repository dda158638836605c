"""FAB-T (Croce & Hein, ICML 2020): the targeted fast adaptive boundary attack, L-inf.

FAB looks for the smallest perturbation that changes the decision, not for the highest loss in
the eps-ball. Each iteration linearises the margin g(x) = z_target(x) - z_true(x) at the current
point, projects both the current point and the original image onto the hyperplane g = 0 (the
minimal L-inf step that stays in the image box [0, 1]), takes a convex combination of the two
steps biased towards the original (so the iterate does not drift away from it) and overshoots a
little. Whenever an iterate is misclassified it is recorded if closer than the best so far, and
the iterate is pulled back towards the original, so the search continues closer to it.

This is the version the standard AutoAttack runs ("fab-t"): one run of 100 iterations per target,
the targets the 9 most likely wrong classes by the clean logits, one restart starting from the
clean image. An example counts as broken when some run found a misclassified point within eps.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from act_jax.attacks import objectives, parts
from act_jax.attacks import targets as targets_lib

# Croce & Hein's defaults, which AutoAttack uses.
DEFAULT_ALPHA_MAX = 0.1
DEFAULT_ETA = 1.05
DEFAULT_BETA = 0.9
# The reference floors both projection norms at this before forming alpha = a1 / (a1 + a2), so a
# point already on the hyperplane does not divide zero by zero.
STEP_NORM_FLOOR = 1e-8
# A restart > 0 starts uniformly on the L-inf sphere of radius this * eps (the reference's choice).
RANDOM_START_FRACTION = 0.5
# (images) -> (margin z_target - z_true [B], its input gradient), from one forward/backward.
MarginAndGradient = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def projection_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The minimal L-inf step onto the hyperplane {x : <w, x> = b} that stays in the box [0, 1].

  Per row i of `points` [N, D] (each in [0, 1]^D), `w` [N, D] and `b` [N], returns the d [N, D]
  that solves  min ||d||_inf  s.t.  <w, t + d> = b,  0 <= t + d <= 1.  When no point of the box
  lies on the hyperplane, d moves t to the corner of the box closest to it in <w, x> (the
  reference's answer, so FAB still makes progress); coordinates with w = 0 never move.

  Why it is exact: orient the hyperplane so that <w, t> >= b; the step must lower <w, x> by
  c = <w, t> - b. Within ||d||_inf <= lam the most it can lower it is by moving every coordinate
  lam towards its box edge (down where w > 0, up where w < 0), saturating at that edge after
  p_i = its distance to it: G(lam) = sum_i |w_i| min(lam, p_i), concave, piecewise linear and
  increasing. The optimum is the lam* with G(lam*) = c. Sorting p descending, G is linear between
  consecutive breakpoints with slope = the weight of the still unsaturated coordinates, so the
  segment holding lam* is found from the values at all breakpoints (cumulative sums) and lam*
  by solving one linear equation. The reference finds the same segment by bisection; the values
  at every breakpoint cost the same O(D) and need no loop.
  """
  t = points
  side = jnp.where(jnp.sum(w * t, axis=-1) - b >= 0, 1.0, -1.0).astype(t.dtype)
  w = w * side[:, None]
  b = b * side
  active = w != 0
  upwards = w < 0  # the coordinates that lower <w, x> by increasing
  # The step to the extreme corner, and each coordinate's room p_i until it saturates there.
  corner_step = jnp.where(active, jnp.where(upwards, 1.0 - t, -t), 0.0)
  room = jnp.where(upwards, 1.0 - t, t)
  needed = b - jnp.sum(w * t, axis=-1)  # the change of <w, x> to make: -c <= 0
  at_corner = jnp.sum(w * corner_step, axis=-1)  # the lowest reachable: -sum |w_i| p_i

  order = jnp.argsort(-room, axis=-1, stable=True)  # largest room first
  sorted_room = jnp.take_along_axis(room, order, axis=-1)
  sorted_weight = jnp.take_along_axis(jnp.abs(w), order, axis=-1)
  # For lam between breakpoints k + 1 and k (in this order), coordinates 0..k move by lam, the
  # rest are saturated: <w, d(lam)> = saturated[k] - unsaturated_weight[k] * lam.
  unsaturated_weight = jnp.cumsum(sorted_weight, axis=-1)
  saturated = jnp.cumsum(sorted_weight * sorted_room, axis=-1) + at_corner[:, None]
  at_breakpoints = saturated - unsaturated_weight * sorted_room  # <w, d(p_(k))>, nondecreasing

  # The last breakpoint still below `needed`: lam* lies on its segment (the largest index, so the
  # next breakpoint is at or above `needed` even where rounding breaks monotonicity).
  dimension = t.shape[-1]
  below = at_breakpoints < needed[:, None]
  segment = jnp.max(jnp.where(below, jnp.arange(dimension), 0), axis=-1)
  take = lambda x: jnp.take_along_axis(x, segment[:, None], axis=-1)[:, 0]
  weight = take(unsaturated_weight)
  lam = jnp.where(weight > 0, (take(saturated) - needed) / jnp.where(weight > 0, weight, 1.0),
                  0.0)
  lam = jnp.maximum(lam, 0.0)[:, None]
  step = jnp.where(upwards, jnp.minimum(lam, corner_step), jnp.maximum(-lam, corner_step))
  # needed <= at_corner: the hyperplane is beyond the box (or touches it at the corner).
  feasible = (needed > at_corner)[:, None]
  return jnp.where(active, jnp.where(feasible, step, corner_step), 0.0)


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def linf_distance(points: jax.Array, images: jax.Array) -> jax.Array:
  """max |points - images| per example [B]."""
  return jnp.max(jnp.abs(_flat(points - images)), axis=-1)


class FabTrace(NamedTuple):
  """One FAB run: the closest misclassified iterate per example and its L-inf distance."""
  best_point: jax.Array  # the start where nothing was misclassified
  best_distance: jax.Array  # [B]: +inf where nothing was misclassified


class _State(NamedTuple):
  point: jax.Array
  best_point: jax.Array
  best_distance: jax.Array


def _advance(margin_and_gradient: MarginAndGradient, predict: Callable[[jax.Array], jax.Array],
             images: jax.Array, labels: jax.Array, state: _State, *, num_steps: int,
             alpha_max: float, eta: float, beta: float, unroll: bool) -> _State:
  """`num_steps` FAB iterations from `state` (see `fab_run`); they do not depend on their index,
  so a run may be split into parts anywhere."""
  per_example = parts.per_example_broadcast
  original = _flat(images)

  def body(state: _State, _) -> tuple[_State, None]:
    point = state.point
    margin, gradient = margin_and_gradient(point)
    w = _flat(gradient)
    b = jnp.sum(w * _flat(point), axis=-1) - margin
    steps = projection_linf(jnp.concatenate([_flat(point), original]),
                            jnp.concatenate([w, w]), jnp.concatenate([b, b]))
    norms = jnp.maximum(jnp.max(jnp.abs(steps), axis=-1), STEP_NORM_FLOOR)
    batch = point.shape[0]
    from_point, from_original = norms[:batch], norms[batch:]
    alpha = jnp.clip(from_point / (from_point + from_original), 0.0, alpha_max)
    alpha = per_example(alpha, point)
    step_from_point = steps[:batch].reshape(point.shape)
    step_from_original = steps[batch:].reshape(point.shape)
    point = jnp.clip((point + eta * step_from_point) * (1.0 - alpha)
                     + (images + eta * step_from_original) * alpha, 0.0, 1.0)

    wrong = predict(point) != labels
    distance = linf_distance(point, images)
    closer = wrong & (distance < state.best_distance)
    best_point = jnp.where(per_example(closer, point), point, state.best_point)
    best_distance = jnp.where(closer, distance, state.best_distance)
    point = jnp.where(per_example(wrong, point), images + (point - images) * beta, point)
    return _State(point, best_point, best_distance), None

  state, _ = jax.lax.scan(body, state, None, length=num_steps,
                          unroll=parts.unroll_factor(num_steps, unroll))
  return state


def _initial_state(start: jax.Array) -> _State:
  return _State(start, start, jnp.full((start.shape[0],), jnp.inf, jnp.float32))


def fab_run(margin_and_gradient: MarginAndGradient, predict: Callable[[jax.Array], jax.Array],
            images: jax.Array, labels: jax.Array, start: jax.Array, *, num_steps: int,
            alpha_max: float = DEFAULT_ALPHA_MAX, eta: float = DEFAULT_ETA,
            beta: float = DEFAULT_BETA, unroll: bool = False) -> FabTrace:
  """`num_steps` FAB iterations from `start` (in [0, 1]), every example on its own.

  Per iteration, with g the margin and w its gradient at x (one forward/backward), the
  hyperplane {v : <w, v> = <w, x> - g(x)} is where the linearised margin is zero;
    d1 = projection_linf(x, w, b), d2 = projection_linf(x_orig, w, b),
    alpha = min(a1 / (a1 + a2), alpha_max), a_i = max(||d_i||_inf, 1e-8),
    x <- clip((1 - alpha) (x + eta d1) + alpha (x_orig + eta d2), 0, 1).
  Then one forward pass checks the new x: if misclassified (any wrong class, not only the
  target) it replaces the best point when strictly closer, and x <- x_orig + beta (x - x_orig).
  """
  state = _advance(margin_and_gradient, predict, images, labels, _initial_state(start),
                   num_steps=num_steps, alpha_max=alpha_max, eta=eta, beta=beta, unroll=unroll)
  stop = jax.lax.stop_gradient
  return FabTrace(stop(state.best_point), stop(state.best_distance))


def targeted_margin_and_gradient(logits_fn: objectives.LogitsFn, labels: jax.Array,
                                 targets: jax.Array) -> MarginAndGradient:
  """images -> (z_target - z_true [B], its input gradient), from one forward/backward.

  The margin is negative while the true class beats the target; FAB drives it to zero. Each
  example's gradient is its own, since the summed margins of the others do not depend on it.
  """

  def total(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits_fn(images).astype(jnp.float32)
    take = lambda classes: jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]
    margin = take(targets) - take(labels)
    return margin.sum(), margin

  gradient_fn = jax.grad(total, has_aux=True)

  def evaluate(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    gradient, margin = gradient_fn(images)
    return margin, gradient

  return evaluate


def fab_random_start(example_rngs: jax.Array, images: jax.Array, eps: float) -> jax.Array:
  """x + 0.5 eps u / ||u||_inf, u ~ U(-1, 1) per pixel, clipped to [0, 1] (FAB's restarts)."""
  sample = lambda key: jax.random.uniform(key, images.shape[1:], images.dtype, -1.0, 1.0)
  noise = jax.vmap(sample)(example_rngs)
  scale = jnp.max(jnp.abs(_flat(noise)), axis=-1)
  scale = jnp.where(scale > 0, scale, 1.0)
  noise = noise / parts.per_example_broadcast(scale, noise)
  return jnp.clip(images + RANDOM_START_FRACTION * eps * noise, 0.0, 1.0)


def _start_point(images: jax.Array, keys: jax.Array, eps: float, restart: int | jax.Array,
                 target_index: int | jax.Array) -> jax.Array:
  """Restart 0 starts from the clean image; restart r > 0 from `fab_random_start` with the
  restart's keys of the target (`parts.target_keys`), as APGD-T draws them."""
  keys = parts.target_keys(keys, target_index)
  return jax.lax.cond(restart == 0, lambda: images, lambda: fab_random_start(keys, images, eps))


def _success_or_clean(trace: FabTrace, images: jax.Array, eps: float) -> parts.Candidate:
  """A run's closest misclassified point within eps, else the clean image. A constant loss:
  among successes keep_worst_case keeps the first, as AutoAttack does."""
  success = trace.best_distance <= eps
  adversarial = jnp.where(parts.per_example_broadcast(success, images), trace.best_point, images)
  return parts.Candidate(adversarial, jnp.zeros_like(trace.best_distance), success)


def _clean_where_misclassified(logits_fn: objectives.LogitsFn, images: jax.Array,
                               labels: jax.Array, adversarial: jax.Array) -> jax.Array:
  """An example misclassified already is returned clean, as the reference does."""
  clean_wrong = objectives.misclassified(jax.lax.stop_gradient(logits_fn(images)), labels)
  return jax.lax.stop_gradient(
      jnp.where(parts.per_example_broadcast(clean_wrong, images), images, adversarial))


class SteppedFab(NamedTuple):
  """One FAB-T restart with every target at once, as pure functions a caller may run as
  separate calls: `start`, `advance` for each part of the iterations (`schedule_parts`: an
  array per part whose length is the part's), `adversarial`. `run` is the three in one.

  The batch is repeated once per target (its k-th most likely wrong class by the clean
  logits), so the state between calls holds only arrays whose leading axis is the repeated
  batch and can stay sharded over devices. See `fab_targeted` for the semantics.
  """
  eps: float
  num_steps: int
  num_target_classes: int = 9
  alpha_max: float = DEFAULT_ALPHA_MAX
  eta: float = DEFAULT_ETA
  beta: float = DEFAULT_BETA

  def start(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
            example_rngs: jax.Array, restart: int | jax.Array = 0) -> dict[str, Any]:
    ranked = targets_lib.ranked_targets(jax.lax.stop_gradient(logits_fn(images)), labels)
    copies = min(self.num_target_classes, ranked.shape[-1])
    targets = targets_lib.targets_per_copy(ranked, copies)
    starts = jnp.concatenate([_start_point(images, example_rngs, self.eps, restart, k)
                              for k in range(copies)])
    return {"state": _initial_state(starts), "targets": targets}

  def advance(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
              carry: dict[str, Any], steps: jax.Array, *, unroll: bool) -> dict[str, Any]:
    copies = carry["targets"].shape[0] // images.shape[0]
    repeat = functools.partial(parts.repeat_batch, copies=copies)
    evaluate = targeted_margin_and_gradient(logits_fn, repeat(labels), carry["targets"])
    predict = lambda x: jnp.argmax(logits_fn(x), axis=-1)
    state = _advance(evaluate, predict, repeat(images), repeat(labels), carry["state"],
                     num_steps=steps.shape[0], alpha_max=self.alpha_max, eta=self.eta,
                     beta=self.beta, unroll=unroll)
    return {**carry, "state": state}

  def worst_case(self, images: jax.Array, carry: dict[str, Any]) -> parts.Candidate:
    batch = images.shape[0]
    state = jax.tree.map(jax.lax.stop_gradient, carry["state"])
    found = _success_or_clean(FabTrace(state.best_point, state.best_distance),
                              parts.repeat_batch(images, carry["targets"].shape[0] // batch),
                              self.eps)
    return parts.worst_case_over_copies(found, batch)

  def schedule_parts(self) -> list[jax.Array]:
    return [jnp.zeros((length,), jnp.int32) for length in parts.part_lengths(self.num_steps)]

  def adversarial(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
                  carry: dict[str, Any]) -> jax.Array:
    found = self.worst_case(images, carry).adversarial
    return _clean_where_misclassified(logits_fn, images, labels, found)

  def run(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
          example_rngs: jax.Array, restart: int | jax.Array = 0) -> parts.Candidate:
    carry = self.start(logits_fn, images, labels, example_rngs, restart)
    carry = self.advance(logits_fn, images, labels, carry,
                         jnp.zeros((self.num_steps,), jnp.int32), unroll=True)
    return self.worst_case(images, carry)


def fab_targeted(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
                 example_rngs: jax.Array, *, eps: float, num_steps: int = 100,
                 num_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = DEFAULT_ALPHA_MAX, eta: float = DEFAULT_ETA,
                 beta: float = DEFAULT_BETA, unroll: bool = False) -> jax.Array:
  """FAB-T (L-inf): one FAB run per target and restart; a success within eps from any of them.

  The targets of an example are its k-th most likely wrong classes by the clean logits,
  k = 1..min(num_target_classes, C - 1). Restart 0 starts from the clean image (no randomness,
  as AutoAttack's FAB-T); restart r > 0 from `fab_random_start` with the keys of restart r
  folded with the target index k (k > 0), as APGD-T draws them. A run succeeds for an example
  when it found a misclassified point within L-inf distance eps; the example then gets the
  closest such point of the first successful run, as in AutoAttack, which stops attacking an
  example once broken. Otherwise it gets its clean image. An example misclassified already is
  returned clean, as the reference does. Runs are ordered restart-major (all targets of restart
  0, then of restart 1, ...), AutoAttack target-major; with the standard single restart the two
  are the same, and either way an example is broken exactly when some run broke it.

  The runs for the different targets are independent. With `unroll` (asked for on CPU) they run
  as one unrolled FAB on the batch repeated once per target (`SteppedFab`); otherwise one after
  another in a rolled loop (keeping memory at one batch). Both give the same result. The result
  carries no gradient.
  """
  if num_target_classes < 1:
    raise ValueError(f"FAB-T num_target_classes {num_target_classes}; must be at least 1")
  if num_steps < 0:
    raise ValueError(f"FAB-T num_steps {num_steps}; must be non-negative")
  if unroll:
    program = SteppedFab(eps, num_steps, num_target_classes, alpha_max, eta, beta)
    run = lambda restart, keys: program.run(logits_fn, images, labels, keys, restart)
    found = parts.worst_case_over_runs(run, example_rngs, restarts).adversarial
    return _clean_where_misclassified(logits_fn, images, labels, found)
  ranked = targets_lib.ranked_targets(jax.lax.stop_gradient(logits_fn(images)), labels)
  num_targets = min(num_target_classes, ranked.shape[-1])
  predict = lambda x: jnp.argmax(logits_fn(x), axis=-1)
  run_options = dict(num_steps=num_steps, alpha_max=alpha_max, eta=eta, beta=beta)

  def one_target(restart: jax.Array, keys: jax.Array, index: jax.Array) -> parts.Candidate:
    target = jax.lax.dynamic_index_in_dim(ranked, index, axis=1, keepdims=False)
    evaluate = targeted_margin_and_gradient(logits_fn, labels, target)
    trace = fab_run(evaluate, predict, images, labels,
                    _start_point(images, keys, eps, restart, index), unroll=False, **run_options)
    return _success_or_clean(trace, images, eps)

  def all_targets_in_turn(restart: jax.Array, keys: jax.Array) -> parts.Candidate:
    return parts.worst_case_over_runs(lambda index, _: one_target(restart, keys, index), keys,
                                      num_targets)

  found = parts.worst_case_over_runs(all_targets_in_turn, example_rngs, restarts).adversarial
  return _clean_where_misclassified(logits_fn, images, labels, found)
