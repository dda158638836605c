"""Each measure of `act_jax.analysis` against a case with a known answer.

The references are independent computations: the dense Hessian (`jax.hessian`) and NumPy's
eigenvalues, eager `jax.jvp`, closed forms (a quadratic, a linear softmax model, matrices of
known rank), the
feature-space form of CKA in NumPy.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from act_jax import models, parallel
from act_jax.analysis import complexity, curvature, objective, representations, weight_noise


def tiny_mlp_loss(seed: int = 0):
  """A 2-layer tanh network's mean cross-entropy on 16 fixed examples, and its parameters."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=16))
  params = {"w1": jnp.asarray(rng.normal(size=(5, 6)) * 0.7, jnp.float32),
            "b1": jnp.asarray(rng.normal(size=6) * 0.1, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(6, 3)) * 0.7, jnp.float32)}

  def loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
  return loss, params


def dense_hessian(loss, params) -> np.ndarray:
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat), np.float64)


def test_top_eigenvalue_of_a_tiny_network_equals_the_dense_hessians():
  loss, params = tiny_mlp_loss()
  size = ravel_pytree(params)[0].size  # 54: a full Krylov space is exact
  expected = np.linalg.eigvalsh(dense_hessian(loss, params)).max()
  got = curvature.top_eigenvalue(loss, params, jax.random.PRNGKey(0), num_matvecs=size)
  np.testing.assert_allclose(got, expected, rtol=1e-3)
  # The default budget (20 products) already converges on this well-separated spectrum.
  np.testing.assert_allclose(curvature.top_eigenvalue(loss, params, jax.random.PRNGKey(1)),
                             expected, rtol=1e-3)


def test_hessian_vector_products_equal_the_dense_hessian_and_the_trace_estimate_is_unbiased():
  loss, params = tiny_mlp_loss()
  hessian = dense_hessian(loss, params)
  flat, unravel = ravel_pytree(params)
  vector = np.random.default_rng(3).normal(size=flat.size).astype(np.float32)
  product = curvature.hessian_vector_product(loss, params)(unravel(jnp.asarray(vector)))
  np.testing.assert_allclose(ravel_pytree(product)[0], hessian @ vector, rtol=1e-3, atol=1e-5)
  estimate, standard_error = curvature.trace(loss, params, jax.random.PRNGKey(0),
                                             num_samples=400)
  assert standard_error > 0
  assert abs(estimate - np.trace(hessian)) < 4 * standard_error


def test_curvature_of_a_quadratic_is_its_analytic_value():
  diagonal = jnp.asarray([5.0, 3.0, 1.0, 0.5, -0.25])
  offset = jnp.asarray([1.0, -2.0, 0.5, 0.0, 3.0])
  rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0].astype(np.float32)
  matrix = jnp.asarray(rotation @ np.diag(np.asarray(diagonal)) @ rotation.T)
  loss = lambda p: 0.5 * (p["x"] - offset) @ matrix @ (p["x"] - offset)
  params = {"x": jnp.zeros(5)}
  np.testing.assert_allclose(
      curvature.top_eigenvalue(loss, params, jax.random.PRNGKey(0), num_matvecs=5), 5.0,
      rtol=1e-3)
  # Rademacher probes give a diagonal matrix's trace exactly (v_i^2 = 1).
  diagonal_loss = lambda p: 0.5 * jnp.sum(diagonal * p["x"] ** 2)
  estimate, _ = curvature.trace(diagonal_loss, params, jax.random.PRNGKey(0), num_samples=3)
  np.testing.assert_allclose(estimate, float(jnp.sum(diagonal)), rtol=1e-5)


class ConvBatchNorm(nn.Module):
  """conv -> BatchNorm (batch statistics) -> ReLU -> pool -> dense: the output does not change
  when a conv filter is scaled."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=False, epsilon=1e-12)(x))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def test_filter_normalised_landscape_is_invariant_to_a_filters_scale():
  model = ConvBatchNorm()
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 6, 6, 1)), jnp.float32)
  labels = jnp.arange(8) % 3
  variables = model.init(jax.random.PRNGKey(0), images)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                            mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  params = variables["params"]
  scaled = jax.tree.map(lambda x: x, params)
  kernel = params["Conv_0"]["kernel"]
  scaled["Conv_0"] = {"kernel": kernel.at[..., 1].multiply(7.0)}
  np.testing.assert_allclose(loss(scaled), loss(params), rtol=1e-5)
  alphas = (-0.5, -0.2, 0.2, 0.5)
  key = jax.random.PRNGKey(1)
  curve = weight_noise.landscape_1d(loss, params, key, alphas=alphas)
  np.testing.assert_allclose(weight_noise.landscape_1d(loss, scaled, key, alphas=alphas), curve,
                             rtol=1e-4)
  # Without filter normalisation the same direction sees a different landscape.
  raw = jax.tree.map(lambda x: jax.random.normal(key, x.shape) * 0.3 if x.ndim > 1 else 0 * x,
                     params)
  along = lambda p: [float(loss(jax.tree.map(lambda w, d, a=a: w + a * d, p, raw)))
                     for a in alphas]
  assert np.max(np.abs(np.asarray(along(scaled)) - np.asarray(along(params)))) > 1e-3


def fisher_rao_on_the_mesh(logits_fn, params, images, direction=None):
  """The per-example values as `act_jax.analysis` computes them: per device, in one `jit`."""
  mesh = parallel.make_mesh()
  examples = objective.place(images, np.zeros(len(images), np.int32), mesh)
  per_example = complexity.fisher_rao_per_example(logits_fn)
  values = objective.per_example(lambda p, d, x, y, i: per_example(p, d, x), examples, mesh,
                                 params, jax.tree.map(jnp.copy, params) if direction is None
                                 else direction)
  return objective.to_host(values, examples)


def test_fisher_rao_norm_of_a_linear_softmax_model_is_its_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(24, 7)).astype(np.float32)
  params = {"w": rng.normal(size=(7, 4)).astype(np.float32),
            "b": rng.normal(size=4).astype(np.float32)}
  values = fisher_rao_on_the_mesh(lambda p, images: images @ p["w"] + p["b"], params, x)
  f = x.astype(np.float64) @ params["w"] + params["b"]
  p = np.exp(f - f.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  closed_form = np.mean(np.sum(p * f**2, 1) - np.sum(p * f, 1) ** 2)
  np.testing.assert_allclose(complexity.fisher_rao_norm(values) ** 2, closed_form, rtol=1e-4)


def test_fisher_rao_of_the_small_cnn_equals_eager_forward_mode():
  """Compiled with the parameters as their own tangent, u came out wrong for this model (its
  max-pool is a reshape and `max`); the measure passes a copy, and must match eager jax.jvp."""
  model = models.SmallCNN(num_classes=10, width=4)
  images = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  stats = variables["batch_stats"]
  logits_fn = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x, train=False)
  params = variables["params"]
  logits, along = jax.jvp(lambda p: logits_fn(p, images), (params,), (params,))  # eager
  probabilities = np.asarray(jax.nn.softmax(logits), np.float64)
  along = np.asarray(along, np.float64)
  expected = (np.sum(probabilities * along**2, 1) - np.sum(probabilities * along, 1) ** 2)
  np.testing.assert_allclose(fisher_rao_on_the_mesh(logits_fn, params, images), expected,
                             rtol=1e-4, atol=1e-6)


def centred_orthonormal(rows: int, rank: int, seed: int) -> np.ndarray:
  a = np.random.default_rng(seed).normal(size=(rows, rank))
  return np.linalg.qr(a - a.mean(axis=0))[0]  # columns: orthonormal and of mean zero


def test_effective_rank_of_matrices_of_known_rank():
  basis = centred_orthonormal(50, 5, 0)
  mixing = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))[0][:5]  # 5 x 12
  np.testing.assert_allclose(representations.effective_rank(3.0 * basis @ mixing), 5.0,
                             rtol=1e-9)
  unequal = basis @ np.diag([10.0, 1.0, 1.0, 1.0, 1.0]) @ mixing
  assert 1.0 < representations.effective_rank(unequal) < 5.0
  np.testing.assert_allclose(representations.effective_rank(np.outer(basis[:, 0], mixing[0])),
                             1.0, rtol=1e-9)


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Kornblith et al.'s feature-space form: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
  x, y = x - x.mean(0), y - y.mean(0)
  return (np.linalg.norm(y.T @ x) ** 2
          / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_linear_cka_identities_and_the_feature_space_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 10))
  y = np.tanh(x @ rng.normal(size=(10, 6))) + 0.5 * rng.normal(size=(40, 6))
  np.testing.assert_allclose(representations.linear_cka(x, x), 1.0, rtol=1e-12)
  rotation = np.linalg.qr(rng.normal(size=(10, 10)))[0]
  np.testing.assert_allclose(representations.linear_cka(x @ rotation * 3.5, y),
                             representations.linear_cka(x, y), rtol=1e-10)
  np.testing.assert_allclose(representations.linear_cka(x, y), feature_space_cka(x, y),
                             rtol=1e-10)
  assert representations.linear_cka(x, rng.normal(size=(40, 6))) < 0.5
  # Convolutional features [n, h, w, c] are flattened per example.
  np.testing.assert_allclose(representations.linear_cka(x.reshape(40, 2, 5, 1), y),
                             feature_space_cka(x, y), rtol=1e-10)


def test_binned_mutual_information_counts_distinct_patterns():
  constant = np.zeros((16, 3))
  assert representations.binned_mutual_information(constant) == 0.0
  distinct = np.arange(16, dtype=np.float64)[:, None] * np.ones((1, 3))
  np.testing.assert_allclose(representations.binned_mutual_information(distinct, bins=16), 4.0)
  two_groups = np.repeat([[0.0], [1.0]], 8, axis=0)
  np.testing.assert_allclose(representations.binned_mutual_information(two_groups), 1.0)


def test_pac_bayes_sigma_is_where_the_noisy_error_crosses_the_tolerance():
  """A one-parameter 'error' that rises with |noise|: E|sigma z| = sigma sqrt(2/pi) for a
  standard normal z; with fixed draws the bisection finds the sigma where the mean over those
  draws equals the tolerance."""
  error = lambda p: jnp.minimum(jnp.abs(p["w"][0, 0]), 1.0)
  params = {"w": jnp.zeros((1, 1))}
  key = jax.random.PRNGKey(0)
  sigma = weight_noise.pac_bayes_sigma(error, params, key, draws=64, iterations=30)
  draws = np.asarray([float(jax.random.normal(jax.random.split(k, 1)[0], (1, 1))[0, 0])
                      for k in jax.random.split(key, 64)])
  np.testing.assert_allclose(sigma * np.mean(np.abs(draws)), 0.1, rtol=1e-3)


def test_averaged_loss_and_its_gradient_ignore_the_padding():
  loss_of = lambda p, x, y: jnp.sum((x.reshape(len(x), -1) @ p) ** 2, -1) + y
  rng = np.random.default_rng(0)
  x = rng.normal(size=(11, 2, 2)).astype(np.float32)  # padded on 2 or 8 devices
  y = rng.integers(0, 3, 11).astype(np.int32)
  p = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  mesh = parallel.make_mesh()
  examples = objective.place(x, y, mesh)
  got = objective.mean_over(loss_of, examples, mesh)(p)
  expected = np.mean(np.sum((x.reshape(11, -1) @ np.asarray(p)) ** 2, -1) + y)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  gradient = jax.grad(objective.mean_over(loss_of, examples, mesh))(p)
  expected_gradient = jax.grad(lambda q: jnp.mean(loss_of(q, jnp.asarray(x), jnp.asarray(y))))(p)
  np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4)
