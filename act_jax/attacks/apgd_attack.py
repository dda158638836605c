"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts per example.

APGD needs no step-size tuning: it starts with a large step (2 eps) and halves it, per example,
at fixed checkpoints whenever the loss stops improving, restarting that example from its best
point. It returns, per example, a misclassified iterate if it found one, else its best point.
APGD-T runs the same loop on the targeted DLR loss once per likely wrong class.
"""

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from act_jax.attacks import objectives, parts
from act_jax.attacks import targets as targets_lib

APGD_LOSSES = ("ce", "dlr", "cw_margin")
# Croce & Hein's defaults; APGD-T always uses them.
DEFAULT_RHO = 0.75
DEFAULT_MOMENTUM = 0.75
# In percent of the iteration budget, so the schedule is computed in exact integer arithmetic.
FIRST_CHECKPOINT_PCT = 22
MIN_CHECKPOINT_GAP_PCT = 6
CHECKPOINT_GAP_DECAY_PCT = 3
# (loss [B], misclassified [B], gradient) at a batch of points.
Evaluate = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def apgd_checkpoints(num_steps: int) -> list[int]:
  """w_j = ceil(p_j * N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).

  The iterations at which APGD may halve its step. Computed in integer hundredths, so that e.g.
  0.41 * 100 is exactly 41 (in floating point 0.22 + 0.19 rounds up and ceil would give 42).
  Checkpoints beyond N are dropped, and so are repeats (a short attack rounds several p_j to one
  iteration).
  """
  if num_steps < 1:
    raise ValueError(f"APGD num_steps {num_steps}; must be at least 1")
  previous, current = 0, FIRST_CHECKPOINT_PCT
  checkpoints = [0]
  while True:
    checkpoint = -(-current * num_steps // 100)  # ceil, exactly
    if checkpoint > num_steps:
      return checkpoints
    if checkpoint != checkpoints[-1]:
      checkpoints.append(checkpoint)
    previous, current = current, current + max(current - previous - CHECKPOINT_GAP_DECAY_PCT,
                                               MIN_CHECKPOINT_GAP_PCT)


def _checkpoint_schedule(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Per iteration k = 0..N-1: whether iterate k + 1 is a checkpoint, and the gap since the last.

  Static arrays, scanned alongside the loop, so the checkpoint test is a mask and not a branch.
  """
  checkpoints = apgd_checkpoints(num_steps)
  is_checkpoint = np.zeros(num_steps, bool)
  gap = np.zeros(num_steps, np.float32)
  for previous, current in itertools.pairwise(checkpoints):
    is_checkpoint[current - 1] = True
    gap[current - 1] = current - previous
  return is_checkpoint, gap


def halve_step_size(increases: jax.Array, gap: float | jax.Array, best_loss: jax.Array,
                    best_loss_at_last_checkpoint: jax.Array,
                    halved_at_last_checkpoint: jax.Array, rho: float) -> jax.Array:
  """APGD's per-example rule at a checkpoint w_j: whether to halve the step size.

  Condition 1: the loss increased in fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1}
  (the iterates oscillate: the step is too large). Condition 2: the step was not halved at
  w_{j-1} and the best loss has not improved since (the iterates are stuck).
  """
  oscillating = increases < rho * gap
  stalled = ~halved_at_last_checkpoint & (best_loss <= best_loss_at_last_checkpoint)
  return oscillating | stalled


class ApgdTrace(NamedTuple):
  """One APGD run: the point it returns and how it got there (for tests and diagnostics)."""
  worst_case: parts.Candidate  # per example: a misclassified iterate if any, else the best point
  best_point: jax.Array  # x_max: the iterate of highest loss
  best_loss: jax.Array  # f_max [B]
  step_sizes: jax.Array  # [N, B]: the step size eta that made iterate k + 1 from iterate k


class _State(NamedTuple):
  point: jax.Array  # x_k
  previous: jax.Array  # x_{k-1}, for the momentum term
  loss: jax.Array  # f(x_k)
  gradient: jax.Array  # grad f(x_k)
  step_size: jax.Array  # eta [B]
  best_point: jax.Array
  best_loss: jax.Array
  best_gradient: jax.Array
  worst_case: parts.Candidate
  increases: jax.Array  # steps since the last checkpoint with f(x_{i+1}) > f(x_i)
  best_loss_at_last_checkpoint: jax.Array
  halved_at_last_checkpoint: jax.Array


Schedule = tuple[jax.Array, jax.Array, jax.Array]  # per iteration: index, is_checkpoint, gap


def _schedule(num_steps: int) -> Schedule:
  is_checkpoint, gap = _checkpoint_schedule(num_steps)
  return (jnp.arange(num_steps), jnp.asarray(is_checkpoint), jnp.asarray(gap))


def _initial_state(evaluate: Evaluate, start: jax.Array, eps: float) -> _State:
  """The state at x_0 = `start` (already in the threat model), the step size 2 eps."""
  loss, wrong, gradient = evaluate(start)
  batch = start.shape[0]
  return _State(
      point=start, previous=start, loss=loss, gradient=gradient,
      step_size=jnp.full((batch,), 2.0 * eps, start.dtype),
      best_point=start, best_loss=loss, best_gradient=gradient,
      worst_case=parts.Candidate(start, loss, wrong),
      increases=jnp.zeros((batch,), jnp.int32),
      best_loss_at_last_checkpoint=loss,
      # As the reference implementation: condition 2 cannot fire at the first checkpoint.
      halved_at_last_checkpoint=jnp.ones((batch,), jnp.bool_))


def _advance(evaluate: Evaluate, state: _State, schedule: Schedule, project: parts.Projection,
             step: parts.StepRule, *, rho: float, momentum: float,
             unroll: bool = False) -> tuple[_State, jax.Array]:
  """The iterations of `schedule` (any consecutive part of the whole run's) from `state`.

  The schedule carries each iteration's index, so that a run split into parts (see
  `SteppedApgd`) takes exactly the steps of the run in one piece.
  """
  per_example = parts.per_example_broadcast

  def body(state: _State, schedule) -> tuple[_State, jax.Array]:
    index, is_checkpoint, gap = schedule
    weight = jnp.where(index == 0, 1.0, momentum)
    z = project(step(state.point, state.gradient, state.step_size))
    point = project(state.point + weight * (z - state.point)
                    + (1.0 - weight) * (state.point - state.previous))
    loss, wrong, gradient = evaluate(point)

    worst_case = parts.keep_worst_case(state.worst_case, parts.Candidate(point, loss, wrong))
    increases = state.increases + (loss > state.loss).astype(jnp.int32)
    improved = loss > state.best_loss
    best_point = jnp.where(per_example(improved, point), point, state.best_point)
    best_gradient = jnp.where(per_example(improved, point), gradient, state.best_gradient)
    best_loss = jnp.where(improved, loss, state.best_loss)

    halve = is_checkpoint & halve_step_size(
        increases, gap, best_loss, state.best_loss_at_last_checkpoint,
        state.halved_at_last_checkpoint, rho)
    restart = per_example(halve, point)
    next_state = _State(
        point=jnp.where(restart, best_point, point),
        previous=jnp.where(restart, best_point, state.point),
        loss=jnp.where(halve, best_loss, loss),
        gradient=jnp.where(restart, best_gradient, gradient),
        step_size=jnp.where(halve, 0.5 * state.step_size, state.step_size),
        best_point=best_point, best_loss=best_loss, best_gradient=best_gradient,
        worst_case=worst_case,
        increases=jnp.where(is_checkpoint, 0, increases),
        best_loss_at_last_checkpoint=jnp.where(is_checkpoint, best_loss,
                                               state.best_loss_at_last_checkpoint),
        halved_at_last_checkpoint=jnp.where(is_checkpoint, halve,
                                            state.halved_at_last_checkpoint))
    return next_state, state.step_size

  num_steps = schedule[0].shape[0]
  return jax.lax.scan(body, state, schedule, unroll=parts.unroll_factor(num_steps, unroll))


def _apgd_run(evaluate: Evaluate, start: jax.Array, project: parts.Projection,
              step: parts.StepRule, *, eps: float, num_steps: int, rho: float,
              momentum: float, unroll: bool = False) -> ApgdTrace:
  """One APGD run from `start` (already in the threat model), every example on its own schedule.

  x_1 = P(x_0 + eta * step(grad f(x_0))); then for k >= 1
    z_{k+1} = P(x_k + eta * step(grad f(x_k))),
    x_{k+1} = P(x_k + momentum * (z_{k+1} - x_k) + (1 - momentum) * (x_k - x_{k-1})),
  with eta = 2 eps at first. At each checkpoint an example whose step is halved restarts from its
  best point, with no momentum (x_k = x_{k-1} = x_max). The model is evaluated once per iterate
  (N + 1 times); the gradient of the best point is kept so a restart needs no extra evaluation.
  """
  state, step_sizes = _advance(evaluate, _initial_state(evaluate, start, eps),
                               _schedule(num_steps), project, step, rho=rho,
                               momentum=momentum, unroll=unroll)
  stop = jax.lax.stop_gradient
  return ApgdTrace(jax.tree.map(stop, state.worst_case), stop(state.best_point),
                   stop(state.best_loss), step_sizes)


def schedule_parts(num_steps: int) -> list[Schedule]:
  """The whole run's schedule in consecutive parts (`parts.part_lengths`)."""
  bounds = np.cumsum([0, *parts.part_lengths(num_steps)])
  return [tuple(array[start:stop] for array in _schedule(num_steps))
          for start, stop in itertools.pairwise(bounds)]


class SteppedApgd(NamedTuple):
  """One APGD run (one restart) as pure functions that a caller may run as separate calls.

  `start` draws the random start and evaluates it, `advance` takes the iterations of a part of
  the schedule (`schedule_parts`, or the whole `_schedule`), `worst_case` gives each example's
  worst point. `run` is all three in one. With `num_target_classes` it is APGD-T with every
  target at once: the batch repeated once per target (its k-th most likely wrong class by the
  clean logits), target k starting from the example's keys folded with k (k > 0), the worst case
  taken over the targets. The state between calls (the carry) holds nothing but arrays whose
  leading axis is the (repeated) batch, so it can stay sharded over devices between calls.
  """
  eps: float
  num_steps: int
  loss: str = "ce"
  norm: str = "linf"
  num_target_classes: int | None = None
  rho: float = DEFAULT_RHO
  momentum: float = DEFAULT_MOMENTUM

  def _evaluate(self, logits_fn: objectives.LogitsFn, labels: jax.Array,
                targets: jax.Array | None) -> Evaluate:
    loss_fn = (objectives.targeted_dlr if targets is not None
               else objectives.check_loss(self.loss, APGD_LOSSES))
    return objectives.loss_and_gradient(logits_fn, loss_fn, labels, targets)

  def start(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
            example_rngs: jax.Array) -> dict[str, Any]:
    parts.check_norm(self.norm)
    if self.num_target_classes is None:
      start = parts.random_init(self.norm, example_rngs, images, self.eps)
      return {"state": _initial_state(self._evaluate(logits_fn, labels, None), start, self.eps)}
    ranked = targets_lib.ranked_targets(jax.lax.stop_gradient(logits_fn(images)), labels)
    copies = min(self.num_target_classes, ranked.shape[-1])
    targets = targets_lib.targets_per_copy(ranked, copies)
    keys = jnp.concatenate([parts.target_keys(example_rngs, k) for k in range(copies)])
    start = parts.random_init(self.norm, keys, parts.repeat_batch(images, copies), self.eps)
    evaluate = self._evaluate(logits_fn, parts.repeat_batch(labels, copies), targets)
    return {"state": _initial_state(evaluate, start, self.eps), "targets": targets}

  def advance(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
              carry: dict[str, Any], schedule: Schedule, *, unroll: bool) -> dict[str, Any]:
    copies = carry["state"].point.shape[0] // images.shape[0]
    evaluate = self._evaluate(logits_fn, parts.repeat_batch(labels, copies),
                              carry.get("targets"))
    state, _ = _advance(evaluate, carry["state"], schedule,
                        parts.projection(self.norm, parts.repeat_batch(images, copies), self.eps),
                        parts.step_rule(self.norm), rho=self.rho, momentum=self.momentum,
                        unroll=unroll)
    return {**carry, "state": state}

  def worst_case(self, images: jax.Array, carry: dict[str, Any]) -> parts.Candidate:
    found = jax.tree.map(jax.lax.stop_gradient, carry["state"].worst_case)
    return parts.worst_case_over_copies(found, images.shape[0])

  def schedule_parts(self) -> list[Schedule]:
    return schedule_parts(self.num_steps)

  def adversarial(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
                  carry: dict[str, Any]) -> jax.Array:
    del logits_fn, labels
    return self.worst_case(images, carry).adversarial

  def run(self, logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
          example_rngs: jax.Array, *, unroll: bool) -> parts.Candidate:
    carry = self.start(logits_fn, images, labels, example_rngs)
    carry = self.advance(logits_fn, images, labels, carry, _schedule(self.num_steps),
                         unroll=unroll)
    return self.worst_case(images, carry)


def _apgd_worst_case(evaluate: Evaluate, images: jax.Array, keys: jax.Array, *, eps: float,
                     num_steps: int, norm: str, rho: float, momentum: float,
                     unroll: bool) -> parts.Candidate:
  """One APGD run from the norm's random start drawn from `keys`."""
  start = parts.random_init(norm, keys, images, eps)
  return _apgd_run(evaluate, start, parts.projection(norm, images, eps), parts.step_rule(norm),
                   eps=eps, num_steps=num_steps, rho=rho, momentum=momentum,
                   unroll=unroll).worst_case


def apgd(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
         example_rngs: jax.Array, *, eps: float, num_steps: int = 100, norm: str = "linf",
         loss: str = "ce", restarts: int = 1, rho: float = DEFAULT_RHO,
         momentum: float = DEFAULT_MOMENTUM, unroll: bool = False) -> jax.Array:
  """APGD-CE / APGD-DLR: untargeted APGD on `loss`, worst case over `restarts` random starts.

  norm "linf" starts uniformly in the box and takes sign steps; "l2" starts at a random direction
  and radius and takes normalised-gradient steps. `example_rngs` holds one key per example;
  `logits_fn` should run the model in eval mode; `unroll` unrolls the iterations
  (`parts.unroll_factor`). The result carries no gradient.
  """
  parts.check_norm(norm)
  objectives.check_loss(loss, APGD_LOSSES)
  program = SteppedApgd(eps, num_steps, loss, norm, rho=rho, momentum=momentum)
  run = lambda _, keys: program.run(logits_fn, images, labels, keys, unroll=unroll)
  return parts.worst_case_over_runs(run, example_rngs, restarts).adversarial


def apgd_targeted(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
                  example_rngs: jax.Array, *, eps: float, num_steps: int = 100,
                  norm: str = "linf", num_target_classes: int = 9, restarts: int = 1,
                  unroll: bool = False) -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss, once per target and restart; the worst case of all.

  The targets of an example are its k-th most likely wrong classes by the clean logits,
  k = 1..min(num_target_classes, C - 1). Success means misclassified, as for every attack here.
  Needs C >= 4 classes (the targeted DLR denominator uses the 4th largest logit).

  The runs for the different targets are independent. With `unroll` (asked for on CPU) they run
  as one unrolled APGD on the batch repeated once per target (`SteppedApgd`), which avoids a
  While loop around the attack; otherwise they run one after another in a rolled loop (on
  accelerators, where it keeps memory at one batch). Both give the same result: target k of
  restart r starts from the keys of restart r folded with k (k > 0).
  """
  parts.check_norm(norm)
  if num_target_classes < 1:
    raise ValueError(f"APGD-T num_target_classes {num_target_classes}; must be at least 1")
  if unroll:
    program = SteppedApgd(eps, num_steps, "targeted_dlr", norm,
                          num_target_classes=num_target_classes)
    run = lambda _, keys: program.run(logits_fn, images, labels, keys, unroll=True)
    return parts.worst_case_over_runs(run, example_rngs, restarts).adversarial
  clean_logits = jax.lax.stop_gradient(logits_fn(images))
  ranked = targets_lib.ranked_targets(clean_logits, labels)
  num_targets = min(num_target_classes, ranked.shape[-1])

  def one_target(index: jax.Array, keys: jax.Array) -> parts.Candidate:
    target = jax.lax.dynamic_index_in_dim(ranked, index, axis=1, keepdims=False)
    evaluate = objectives.loss_and_gradient(logits_fn, objectives.targeted_dlr, labels, target)
    return _apgd_worst_case(evaluate, images, parts.target_keys(keys, index), eps=eps,
                            num_steps=num_steps,
                            norm=norm, rho=DEFAULT_RHO, momentum=DEFAULT_MOMENTUM, unroll=False)

  def all_targets_in_turn(_, keys: jax.Array) -> parts.Candidate:
    return parts.worst_case_over_runs(lambda index, _: one_target(index, keys), keys, num_targets)

  return parts.worst_case_over_runs(all_targets_in_turn, example_rngs, restarts).adversarial
