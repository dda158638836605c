"""The attacks: one step against an analytic NumPy gradient, and the threat-model constraints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import attacks
from act_jax.attacks import parts
from test_losses import np_log_softmax

NUM_CLASSES = 5


def linear_model(weights, bias):
  return lambda images: images.reshape(images.shape[0], -1) @ weights + bias


def keys(seed, count=4):
  """One key per example, as the train and eval steps pass them."""
  return jax.random.split(jax.random.PRNGKey(seed), count)


def np_softmax(z):
  return np.exp(np_log_softmax(z))


@pytest.fixture
def problem():
  rng = np.random.default_rng(1)
  images = rng.uniform(0.05, 0.95, size=(4, 3, 3, 2)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=4)
  weights = rng.normal(size=(18, NUM_CLASSES)).astype(np.float32)
  bias = rng.normal(size=NUM_CLASSES).astype(np.float32)
  natural_logits = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32) * 2
  return images, labels, weights, bias, natural_logits


def np_act_attack_step(images, start, labels, weights, bias, natural_logits, *, alpha, eps,
                       step_size, reduction):
  """One ACT attack step by hand: d/dlogits of CE_mean is (p - onehot)/B, of KL_sum is (p - q)."""
  batch = len(labels)
  logits = start.reshape(batch, -1) @ weights + bias
  probs = np_softmax(logits.astype(np.float64))
  onehot = np.eye(NUM_CLASSES)[labels]
  kl_weight = alpha if reduction == "reference" else alpha / batch
  dlogits = (1 - alpha) * (probs - onehot) / batch + kl_weight * (probs - np_softmax(natural_logits))
  gradient = (dlogits @ weights.T).reshape(start.shape)
  stepped = start + step_size * np.sign(gradient)
  return np.clip(np.clip(stepped, images - eps, images + eps), 0.0, 1.0)


@pytest.mark.parametrize("reduction", ["reference", "mean"])
def test_one_act_attack_step_matches_numpy(problem, reduction):
  images, labels, weights, bias, natural_logits = problem
  rng = keys(3)
  eps, step_size, alpha = 0.1, 0.03, 0.9
  adversarial = attacks.act_training_attack(
      linear_model(weights, bias), jnp.asarray(images), jnp.asarray(labels),
      jnp.asarray(natural_logits), rng, eps=eps, step_size=step_size, num_steps=1, alpha=alpha,
      reduction=reduction, global_batch_size=len(labels))
  start = np.asarray(parts.gaussian_init(rng, jnp.asarray(images), 0.001))
  noise = np.stack([np.asarray(jax.random.normal(k, images.shape[1:])) for k in rng])
  np.testing.assert_allclose(start - images, 0.001 * noise, atol=1e-7)
  expected = np_act_attack_step(images, start, labels, weights, bias, natural_logits, alpha=alpha,
                                eps=eps, step_size=step_size, reduction=reduction)
  np.testing.assert_allclose(adversarial, expected, atol=1e-6)


def test_one_pgd_step_matches_numpy(problem):
  images, labels, weights, bias, _ = problem
  rng = keys(4)
  eps, step_size = 0.1, 0.03
  adversarial = attacks.pgd_linf(linear_model(weights, bias), jnp.asarray(images),
                                 jnp.asarray(labels), rng, eps=eps, step_size=step_size,
                                 num_steps=1)
  noise = np.stack([np.asarray(jax.random.uniform(k, images.shape[1:], minval=-eps, maxval=eps))
                    for k in rng])
  start = np.clip(images + noise, 0, 1)
  logits = start.reshape(len(labels), -1) @ weights + bias
  gradient = ((np_softmax(logits) - np.eye(NUM_CLASSES)[labels]) @ weights.T).reshape(images.shape)
  expected = np.clip(np.clip(start + step_size * np.sign(gradient), images - eps, images + eps), 0, 1)
  np.testing.assert_allclose(adversarial, expected, atol=1e-6)


@pytest.mark.parametrize("attack", ["act", "pgd"])
def test_adversarial_examples_stay_in_eps_ball_and_image_range(problem, attack):
  _, labels, weights, bias, natural_logits = problem
  images = jnp.asarray(np.random.default_rng(2).choice([0.0, 0.02, 0.5, 0.98, 1.0],
                                                       size=(4, 3, 3, 2)), jnp.float32)
  eps = 0.05
  kwargs = dict(eps=eps, step_size=0.04, num_steps=7)
  if attack == "act":
    adversarial = attacks.act_training_attack(
        linear_model(weights, bias), images, jnp.asarray(labels), jnp.asarray(natural_logits),
        keys(0), alpha=0.9, reduction="reference", global_batch_size=4, **kwargs)
  else:
    adversarial = attacks.pgd_linf(linear_model(weights, bias), images, jnp.asarray(labels),
                                   keys(0), **kwargs)
  assert float(jnp.max(jnp.abs(adversarial - images))) <= eps + 1e-6
  assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
  assert float(jnp.max(jnp.abs(adversarial - images))) > eps / 2  # it did move


def test_noise_of_an_example_does_not_depend_on_the_rest_of_the_batch(problem):
  images = jnp.asarray(problem[0])
  whole = parts.gaussian_init(keys(5), images, 0.1)
  halves = [parts.gaussian_init(keys(5)[i:i + 2], images[i:i + 2], 0.1) for i in (0, 2)]
  np.testing.assert_array_equal(whole, jnp.concatenate(halves))
  assert float(jnp.abs(whole[0] - whole[1] - (images[0] - images[1])).max()) > 0


def test_attack_is_jittable_and_carries_no_gradient(problem):
  images, labels, weights, bias, natural_logits = problem

  def attacked_loss(images):
    adversarial = attacks.pgd_linf(linear_model(weights, bias), images, jnp.asarray(labels),
                                   keys(0), eps=0.1, step_size=0.01, num_steps=3)
    return jnp.sum(adversarial)

  assert float(jnp.abs(jax.jit(jax.grad(attacked_loss))(jnp.asarray(images))).max()) == 0.0
