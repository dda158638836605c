"""How the loss changes when the weights move: filter-normalised noise, landscapes, PAC-Bayes.

Filter normalisation (Li et al. 2018, "Visualizing the loss landscape of neural nets"): a
random Gaussian direction d is rescaled, filter by filter, to the norm of the weights' own
filter, d_f <- d_f * ||theta_f|| / ||d_f||, so that a step along d moves every filter by the
same fraction of its size whatever the network's scale. A filter is one output unit: the slice
of a convolution kernel [kh, kw, c_in, c_out] or a dense kernel [c_in, c_out] at one output
index. Parameters of one dimension (biases, BatchNorm scales and offsets) get no direction, as
in Li et al.: a network with BatchNorm after every convolution is invariant to each filter's
scale, and only filter-normalised directions see the same landscape at every scale.

- `noise_rise`: the mean rise of the loss and error over `draws` directions at each scale s,
  theta + s d (the "sharpness under weight noise" of Keskar et al. 2017, filter-normalised);
- `landscape_1d`, `landscape_2d`: the loss along one direction and over the plane of two
  (Li et al. 2018), as plotted by `act_jax.analysis.report`;
- `pac_bayes_sigma`: the largest sigma of isotropic noise theta + N(0, sigma^2 I) whose
  expected training error stays within `tolerance` (0.1) of the error at theta, by bisection on
  log sigma, each expectation over fixed draws (Jiang et al. 2020, "Fantastic generalization
  measures", the PAC-Bayes sharpness measure's sigma'). Larger is flatter.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Metric = Callable[[Any], jax.Array]  # params -> scalar


def _is_filtered(leaf: jax.Array) -> bool:
  return leaf.ndim >= 2


def _filter_norms(x: jax.Array) -> jax.Array:
  """The norm of each filter (each index of the last, output axis), broadcastable to `x`."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)), keepdims=True))


def filter_normalised_direction(key: jax.Array, params: Any) -> Any:
  """A random direction with each filter's norm equal to that filter's norm in `params`, and
  zero on one-dimensional parameters (biases, BatchNorm)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  directions = []
  for leaf_key, leaf in zip(keys, leaves, strict=True):
    if not _is_filtered(leaf):
      directions.append(jnp.zeros_like(leaf))
      continue
    noise = jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
    scale = _filter_norms(leaf) / jnp.maximum(_filter_norms(noise), 1e-12)
    directions.append(noise * scale)
  return jax.tree.unflatten(treedef, directions)


def _moved(params: Any, steps: Sequence[tuple[float, Any]]) -> Any:
  """params + sum of coefficient * direction."""
  return jax.tree.map(lambda p, *ds: p + sum(c * d for (c, _), d in zip(steps, ds, strict=True)),
                      params, *[d for _, d in steps])


def noise_rise(loss: Metric, error: Metric, params: Any, key: jax.Array, *,
               scales: Sequence[float], draws: int) -> dict[str, list[float]]:
  """At each scale: the mean (and std over draws) rise of the loss and of the error."""
  base_loss, base_error = float(loss(params)), float(error(params))
  directions = [filter_normalised_direction(k, params) for k in jax.random.split(key, draws)]
  result: dict[str, list[float]] = {"scales": list(scales), "loss_rise": [],
                                    "loss_rise_std": [], "error_rise": [], "error_rise_std": []}
  for scale in scales:
    moved = [_moved(params, [(scale, d)]) for d in directions]
    losses = np.asarray([float(loss(p)) for p in moved]) - base_loss
    errors = np.asarray([float(error(p)) for p in moved]) - base_error
    result["loss_rise"].append(float(losses.mean()))
    result["loss_rise_std"].append(float(losses.std()))
    result["error_rise"].append(float(errors.mean()))
    result["error_rise_std"].append(float(errors.std()))
  return result


def landscape_1d(loss: Metric, params: Any, key: jax.Array, *, alphas: Sequence[float]
                 ) -> list[float]:
  """The loss at params + alpha d along one filter-normalised direction d."""
  direction = filter_normalised_direction(key, params)
  return [float(loss(_moved(params, [(alpha, direction)]))) for alpha in alphas]


def landscape_2d(loss: Metric, params: Any, key: jax.Array, *, alphas: Sequence[float]
                 ) -> list[list[float]]:
  """The loss at params + a d1 + b d2 over the grid alphas x alphas (rows: a)."""
  first, second = (filter_normalised_direction(k, params) for k in jax.random.split(key))
  return [[float(loss(_moved(params, [(a, first), (b, second)]))) for b in alphas]
          for a in alphas]


def pac_bayes_sigma(error: Metric, params: Any, key: jax.Array, *, draws: int,
                    tolerance: float = 0.1, iterations: int = 12,
                    bounds: tuple[float, float] = (1e-5, 1.0)) -> float:
  """The largest isotropic noise scale with E[error(params + N(0, sigma^2))] - error(params)
  <= tolerance, by bisection on log sigma between `bounds`, over the same `draws` unit-variance
  draws at every sigma (so the expectation is monotone in practice and the answer
  deterministic given `key`)."""
  base = float(error(params))
  noises = []
  for draw_key in jax.random.split(key, draws):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(draw_key, len(leaves))
    noises.append(jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype)
                                               for k, leaf in zip(keys, leaves, strict=True)]))

  def within(sigma: float) -> bool:
    rise = np.mean([float(error(_moved(params, [(sigma, noise)]))) for noise in noises]) - base
    return rise <= tolerance

  low, high = np.log(bounds[0]), np.log(bounds[1])
  if within(float(np.exp(high))):
    return float(np.exp(high))
  for _ in range(iterations):
    middle = 0.5 * (low + high)
    low, high = (middle, high) if within(float(np.exp(middle))) else (low, middle)
  return float(np.exp(low))
