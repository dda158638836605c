"""Square attack (Andriushchenko et al., ECCV 2020): L-inf random search that needs no gradient.

Square only queries the model's logits, so it sees through gradient masking (shattered, zero or
random gradients) that stalls PGD and APGD; AutoAttack runs it last for exactly that reason. This
is the L-inf version as AutoAttack's standard run configures it (fra31/auto-attack
`autoattack/square.py`: margin loss, p_init 0.8, 5000 queries, 1 restart, `resc_schedule=False`):

  x_best = clip(x + eps * s, 0, 1), s in {-1, +1} drawn per (column, channel): vertical stripes.
  For i = 0 .. N - 1, while the example is still classified correctly (margin > 0):
    side = min(max(round(sqrt(p(i) * H * W)), 1), min(H, W)),
    a side x side window at a uniform position (top in [0, H - side), left in [0, W - side)),
    x_new = P(x_best + 2 eps * sign on that window, one sign per channel), P the projection onto
      the eps-box around x and onto [0, 1] (so the window's pixels land on x +- eps),
    x_best <- x_new if margin(x_new) < margin(x_best),
  with margin = z_y - max_{j != y} z_j and p(i) = p_init halved after iterations 10, 50, 200, 500,
  1000, 2000, 4000, 6000 and 8000 (p(i) = p_init / 2 for 10 < i <= 50, and so on).

Documented differences from the original, none of which changes what the attack can find:
- Randomness is per example: every example draws its own stripes, window positions and signs
  from its own key, folded with the iteration, so a result depends neither on the rest of the
  batch nor on how the batch is split across devices. The original draws one window position and
  one sign vector per iteration and shares them by all examples still being attacked.
- Signs are exactly +-1 (`jax.random.rademacher`); the original's sign(2u - 1) is 0 with
  probability about 2^-24 per draw. Window positions are exactly uniform integers.
- The loop runs all examples every iteration (static shapes) and stops once every example is
  misclassified; an example whose margin is <= 0 no longer changes. The original queries only the
  examples still to fool, which changes the cost, not the result.
- An example that is misclassified on its clean input is returned as it is (as the original,
  which does not attack it). One that Square does not fool is returned at its best point (least
  margin) rather than at the clean image, so callers can still see how close it came; robust
  accuracy is the same.
- Restarts (the original reseeds once and continues its stream) fold every example's key with the
  restart index (`parts.worst_case_over_runs`).
The older stand-alone Square code (max-andr/square-attack) re-drew the signs of a window that
would not change the point; no AutoAttack version does, and neither does this one.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from act_jax.attacks import objectives, parts

DEFAULT_NUM_QUERIES = 5000
DEFAULT_P_INIT = 0.8
# p_init is halved after each of these iterations (p(i) = p_init / 2^k for the k thresholds < i).
P_SCHEDULE_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class Draws(NamedTuple):
  """Where Square's randomness comes from, per batch, so tests can inject another source.

  initial_signs(keys [B], width, channels) -> [B, W, C] in {-1, +1}: the stripes of x_best.
  window(keys [B], iteration, side, height, width, channels) -> (top [B], left [B] int32,
    signs [B, C] in {-1, +1}): iteration `iteration`'s window, top in [0, max(H - side, 1)),
    left likewise, and the sign per channel it writes.
  `keys` are the run's example keys, `iteration` (a traced int32 scalar) counts from 0, `side` is
  a traced int32 scalar. The default (`per_example_draws`) derives everything from each example's
  own key; a parity test replaces it with the draws a reference implementation made.
  """
  initial_signs: Callable[[jax.Array, int, int], jax.Array]
  window: Callable[[jax.Array, jax.Array, jax.Array, int, int, int],
                   tuple[jax.Array, jax.Array, jax.Array]]


def _stripes(keys: jax.Array, width: int, channels: int) -> jax.Array:
  init_key = lambda key: jax.random.fold_in(key, 0)
  return jax.vmap(lambda key: jax.random.rademacher(init_key(key), (width, channels),
                                                    jnp.float32))(keys)


def _window(keys: jax.Array, iteration: jax.Array, side: jax.Array, height: int, width: int,
            channels: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One example's window from its key folded with 1 (the loop stream) and the iteration."""

  def draw(key):
    top_key, left_key, sign_key = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(key, 1), iteration), 3)
    top = jax.random.randint(top_key, (), 0, jnp.maximum(height - side, 1))
    left = jax.random.randint(left_key, (), 0, jnp.maximum(width - side, 1))
    return top, left, jax.random.rademacher(sign_key, (channels,), jnp.float32)

  return jax.vmap(draw)(keys)


per_example_draws = Draws(_stripes, _window)


def p_selection(iteration: int, p_init: float = DEFAULT_P_INIT) -> float:
  """The fraction of pixels the window covers at `iteration` (0-based), AutoAttack's schedule.

  p_init / 2^k, k the number of thresholds strictly below the iteration: p_init for i <= 10,
  p_init / 2 for 10 < i <= 50, ..., p_init / 512 for i > 8000 (the schedule is not rescaled to the
  query budget, as in AutoAttack's standard run).
  """
  halvings = sum(iteration > threshold for threshold in P_SCHEDULE_THRESHOLDS)
  return p_init / 2**halvings


def window_side(iteration: int, height: int, width: int, channels: int,
                p_init: float = DEFAULT_P_INIT) -> int:
  """The side of the square window at `iteration`: min(max(round(sqrt(p * H * W)), 1), min(H, W)).

  Computed as the original does, in Python floats with Python's round (half to even), so the
  side is the same integer.
  """
  n_features = channels * height * width
  side = max(round(math.sqrt(p_selection(iteration, p_init) * n_features / channels)), 1)
  return min(side, min(height, width))


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """z_y - max_{j != y} z_j per example: Square's loss, <= 0 once the example is fooled."""
  return -objectives.cw_margin(logits, labels)


class SquareTrace(NamedTuple):
  """One Square run: each example's best point and how the search went (tests, diagnostics)."""
  adversarial: jax.Array  # x_best [B, H, W, C]
  margin: jax.Array  # its margin [B]; <= 0 where the example was fooled
  queries: jax.Array  # model queries per example [B], the initial point included
  # [N, B] the margin of every proposed point x_new, +inf where the example was no longer
  # attacked (already fooled, or the loop had stopped); None unless asked for.
  proposed_margins: jax.Array | None


class _State(NamedTuple):
  iteration: jax.Array
  best: jax.Array
  margin: jax.Array
  queries: jax.Array
  proposed_margins: jax.Array | None


def square_run(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
               example_rngs: jax.Array, *, eps: float,
               num_queries: int = DEFAULT_NUM_QUERIES, p_init: float = DEFAULT_P_INIT,
               draws: Draws = per_example_draws, record: bool = False) -> SquareTrace:
  """One Square run on a batch [B, H, W, C] (see the module docstring), every example on its own.

  The query loop is a `lax.while_loop` that stops after `num_queries` iterations or as soon as
  every example is fooled. The window's side changes with the iteration, so the window is applied
  as a mask built from the (traced) position and side rather than as a slice of static size.
  `record` keeps the margin of every proposed point ([num_queries, B] floats).
  """
  if num_queries < 0:
    raise ValueError(f"Square num_queries {num_queries}; must be at least 0")
  _, height, width, channels = images.shape
  sides = jnp.asarray([window_side(i, height, width, channels, p_init)
                       for i in range(num_queries)] or [1], jnp.int32)
  evaluate = lambda points: margin(logits_fn(points).astype(jnp.float32), labels)
  per_example = parts.per_example_broadcast

  stripes = draws.initial_signs(example_rngs, width, channels).astype(images.dtype)
  start = jnp.clip(images + eps * stripes[:, None, :, :], 0.0, 1.0)
  rows = jnp.arange(height)[None, :, None, None]
  columns = jnp.arange(width)[None, None, :, None]

  def cond(state: _State) -> jax.Array:
    return (state.iteration < num_queries) & jnp.any(state.margin > 0)

  def body(state: _State) -> _State:
    side = sides[state.iteration]
    top, left, signs = draws.window(example_rngs, state.iteration, side, height, width, channels)
    top, left = per_example(top, images), per_example(left, images)
    in_window = ((rows >= top) & (rows < top + side) & (columns >= left)
                 & (columns < left + side))
    step = jnp.where(in_window, 2.0 * eps * signs.astype(images.dtype)[:, None, None, :], 0.0)
    # The box around x first, then [0, 1], as the original (the two clips commute here).
    proposal = jnp.clip(jnp.clip(state.best + step, images - eps, images + eps), 0.0, 1.0)
    proposed = evaluate(proposal)
    attacked = state.margin > 0
    improved = attacked & (proposed < state.margin)
    proposed_margins = state.proposed_margins
    if proposed_margins is not None:
      proposed_margins = proposed_margins.at[state.iteration].set(
          jnp.where(attacked, proposed, jnp.inf))
    return _State(
        iteration=state.iteration + 1,
        best=jnp.where(per_example(improved, proposal), proposal, state.best),
        margin=jnp.where(improved, proposed, state.margin),
        queries=state.queries + attacked.astype(jnp.int32),
        proposed_margins=proposed_margins)

  batch = images.shape[0]
  state = _State(
      iteration=jnp.asarray(0, jnp.int32), best=start, margin=evaluate(start),
      queries=jnp.ones((batch,), jnp.int32),
      proposed_margins=(jnp.full((num_queries, batch), jnp.inf, jnp.float32) if record
                        else None))
  state = jax.lax.while_loop(cond, body, state)
  stop = jax.lax.stop_gradient
  return SquareTrace(stop(state.best), stop(state.margin), state.queries,
                     None if state.proposed_margins is None else stop(state.proposed_margins))


def square(logits_fn: objectives.LogitsFn, images: jax.Array, labels: jax.Array,
           example_rngs: jax.Array, *, eps: float, num_queries: int = DEFAULT_NUM_QUERIES,
           p_init: float = DEFAULT_P_INIT, restarts: int = 1, unroll: bool = False) -> jax.Array:
  """Square-N (L-inf, margin loss): adversarial images [B, H, W, C], worst case over `restarts`.

  `images` NHWC in [0, 1]; `example_rngs` one key per example; `logits_fn` should run the model
  in eval mode. Every returned pixel lies within eps of the image and in [0, 1]; the result
  carries no gradient. Per example: the clean image if it is already misclassified, else a
  misclassified point if a run found one, else the point of least margin.

  `unroll` is accepted for a uniform attack interface and ignored: the query loop is a rolled
  `lax.while_loop` whatever the backend, since thousands of queries cannot be unrolled and a
  partial unroll leaves the While loop (the slow part on XLA:CPU, see `parts.unroll_factor`).
  """
  del unroll
  clean_wrong = objectives.misclassified(
      jax.lax.stop_gradient(logits_fn(images)).astype(jnp.float32), labels)

  def run(_, keys: jax.Array) -> parts.Candidate:
    trace = square_run(logits_fn, images, labels, keys, eps=eps, num_queries=num_queries,
                       p_init=p_init)
    logits = logits_fn(trace.adversarial).astype(jnp.float32)
    return parts.Candidate(trace.adversarial, objectives.cw_margin(logits, labels),
                           objectives.misclassified(logits, labels))

  adversarial = parts.worst_case_over_runs(run, example_rngs, restarts).adversarial
  return jax.lax.stop_gradient(
      jnp.where(parts.per_example_broadcast(clean_wrong, images), images, adversarial))
