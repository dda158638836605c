"""Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts per example.

APGD needs no step-size tuning: it starts with a large step (2 eps) and halves it, per example,
at fixed checkpoints whenever the loss stops improving, restarting that example from its best
point. It returns, per example, a misclassified iterate if it found one, else its best point.
APGD-T runs the same loop on the targeted DLR loss once per likely wrong class.
"""

import functools
import itertools
from collections.abc import Callable
from typing import NamedTuple

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
  loss, wrong, gradient = evaluate(start)
  batch = start.shape[0]
  state = _State(
      point=start, previous=start, loss=loss, gradient=gradient,
      step_size=jnp.full((batch,), 2.0 * eps, start.dtype),
      best_point=start, best_loss=loss, best_gradient=gradient,
      worst_case=parts.Candidate(start, loss, wrong),
      increases=jnp.zeros((batch,), jnp.int32),
      best_loss_at_last_checkpoint=loss,
      # As the reference implementation: condition 2 cannot fire at the first checkpoint.
      halved_at_last_checkpoint=jnp.ones((batch,), jnp.bool_))
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

  is_checkpoint, gap = _checkpoint_schedule(num_steps)
  schedule = (jnp.arange(num_steps), jnp.asarray(is_checkpoint), jnp.asarray(gap))
  state, step_sizes = jax.lax.scan(body, state, schedule,
                                   unroll=parts.unroll_factor(num_steps, unroll))
  stop = jax.lax.stop_gradient
  return ApgdTrace(jax.tree.map(stop, state.worst_case), stop(state.best_point),
                   stop(state.best_loss), step_sizes)


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
  loss_fn = objectives.check_loss(loss, APGD_LOSSES)
  evaluate = objectives.loss_and_gradient(logits_fn, loss_fn, labels)
  run = lambda _, keys: _apgd_worst_case(evaluate, images, keys, eps=eps, num_steps=num_steps,
                                         norm=norm, rho=rho, momentum=momentum, unroll=unroll)
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
  as one unrolled APGD on the batch repeated once per target, which avoids a While loop around
  the attack; otherwise they run one after another in a rolled loop (on accelerators, where it
  keeps memory at one batch). Both give the same result: target k of restart r starts from the
  keys of restart r folded with k (k > 0).
  """
  parts.check_norm(norm)
  if num_target_classes < 1:
    raise ValueError(f"APGD-T num_target_classes {num_target_classes}; must be at least 1")
  clean_logits = jax.lax.stop_gradient(logits_fn(images))
  ranked = targets_lib.ranked_targets(clean_logits, labels)
  num_targets = min(num_target_classes, ranked.shape[-1])

  def target_keys(keys: jax.Array, index: int | jax.Array) -> jax.Array:
    return jax.lax.cond(index == 0, lambda: keys, lambda: parts.per_example_keys(keys, index))

  def one_target(index: jax.Array, keys: jax.Array) -> parts.Candidate:
    target = jax.lax.dynamic_index_in_dim(ranked, index, axis=1, keepdims=False)
    evaluate = objectives.loss_and_gradient(logits_fn, objectives.targeted_dlr, labels, target)
    return _apgd_worst_case(evaluate, images, target_keys(keys, index), eps=eps,
                            num_steps=num_steps, norm=norm, rho=DEFAULT_RHO,
                            momentum=DEFAULT_MOMENTUM, unroll=False)

  def all_targets_in_turn(_, keys: jax.Array) -> parts.Candidate:
    return parts.worst_case_over_runs(lambda index, _: one_target(index, keys), keys, num_targets)

  def all_targets_batched(_, keys: jax.Array) -> parts.Candidate:
    batch = images.shape[0]
    repeat = lambda x: jnp.concatenate([x] * num_targets)
    tiled_targets = jnp.concatenate([ranked[:, k] for k in range(num_targets)])
    tiled_keys = jnp.concatenate([target_keys(keys, k) for k in range(num_targets)])
    tiled_images, tiled_labels = repeat(images), repeat(labels)
    evaluate = objectives.loss_and_gradient(logits_fn, objectives.targeted_dlr, tiled_labels,
                                            tiled_targets)
    tiled = _apgd_worst_case(evaluate, tiled_images, tiled_keys, eps=eps, num_steps=num_steps,
                             norm=norm, rho=DEFAULT_RHO, momentum=DEFAULT_MOMENTUM,
                             unroll=True)
    per_target = [jax.tree.map(lambda x, k=k: x[k * batch:(k + 1) * batch], tiled)
                  for k in range(num_targets)]
    return functools.reduce(parts.keep_worst_case, per_target)

  run = all_targets_batched if unroll else all_targets_in_turn
  return parts.worst_case_over_runs(run, example_rngs, restarts).adversarial
