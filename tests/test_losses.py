"""Parity of the ACT losses and the attack objective with an independent NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import losses
from act_jax.attacks import objectives

from helpers import np_log_softmax


def np_cross_entropy_per_example(logits, labels):
  return -np_log_softmax(logits)[np.arange(len(labels)), labels]


def np_kl_per_example(student, teacher, temperature):
  """sum_c softmax(t/T) * (log softmax(t/T) - log softmax(s/T)), as torch's KLDivLoss has it."""
  log_t = np_log_softmax(teacher / temperature)
  log_s = np_log_softmax(student / temperature)
  return (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(6, 10)).astype(np.float64) * 3
  teacher = rng.normal(size=(6, 10)).astype(np.float64) * 3
  labels = rng.integers(0, 10, size=6)
  return student, teacher, labels


def test_cross_entropy_matches_numpy(batch):
  student, _, labels = batch
  expected = np_cross_entropy_per_example(student, labels).mean()
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(student), jnp.asarray(labels)),
                             expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_kl_has_t_squared_scaling(batch, temperature):
  student, teacher, _ = batch
  expected = temperature**2 * np_kl_per_example(student, teacher, temperature).sum() / len(student)
  actual = losses.distillation_kl(jnp.asarray(student), jnp.asarray(teacher), temperature)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_act_model_loss_mixes_ce_and_kl(batch):
  student, teacher, labels = batch
  alpha, temperature = 0.9, 4.0
  expected = ((1 - alpha) * np_cross_entropy_per_example(student, labels).mean()
              + alpha * temperature**2 * np_kl_per_example(student, teacher, temperature).mean())
  total, parts = losses.act_model_loss(jnp.asarray(student), jnp.asarray(teacher),
                                       jnp.asarray(labels), alpha=alpha, temperature=temperature)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(parts["accuracy"], np.mean(student.argmax(-1) == labels))


@pytest.mark.parametrize("reduction", ["reference", "mean"])
def test_attack_objective_reductions(batch, reduction):
  adversarial, natural, labels = batch
  alpha, batch_size = 0.9, len(labels)
  ce_mean = np_cross_entropy_per_example(adversarial, labels).mean()
  kl = np_kl_per_example(adversarial, natural, 1.0)
  kl_term = kl.sum() if reduction == "reference" else kl.mean()
  expected = (1 - alpha) * ce_mean + alpha * kl_term
  objective = objectives.act_objective(lambda x: x, jnp.asarray(labels), jnp.asarray(natural),
                                       alpha=alpha, reduction=reduction,
                                       global_batch_size=batch_size)
  np.testing.assert_allclose(objective(jnp.asarray(adversarial)), expected, rtol=1e-5)


def test_attack_objective_rejects_unknown_reduction():
  with pytest.raises(ValueError, match="reference, mean"):
    objectives.act_objective(lambda x: x, jnp.zeros(2, jnp.int32), jnp.zeros((2, 3)), alpha=0.5,
                             reduction="sum", global_batch_size=2)


def test_trades_loss_matches_numpy_with_gradients_through_both_kl_arguments(batch):
  """CE(f(x), y) + beta * mean KL(softmax(f(x)) || softmax(f(x'))), the KL not detached.

  The gradient of the KL term with respect to the clean logits is checked against NumPy
  central differences: it is non-zero, as in the official code's undetached softmax(f(x)).
  """
  adversarial, clean, labels = batch
  beta = 6.0
  expected = (np_cross_entropy_per_example(clean, labels).mean()
              + beta * np_kl_per_example(adversarial, clean, 1.0).mean())
  total, parts = losses.trades_loss(jnp.asarray(clean), jnp.asarray(adversarial),
                                    jnp.asarray(labels), beta=beta)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(parts["kl"], np_kl_per_example(adversarial, clean, 1.0).mean(),
                             rtol=1e-5)
  kl_of_clean = lambda c: np_kl_per_example(adversarial, c, 1.0).mean()
  step, numeric = 1e-5, np.zeros_like(clean)
  for index in np.ndindex(clean.shape):
    delta = np.zeros_like(clean)
    delta[index] = step
    numeric[index] = (kl_of_clean(clean + delta) - kl_of_clean(clean - delta)) / (2 * step)
  analytic = jax.grad(lambda c: losses.trades_loss(
      c, jnp.asarray(adversarial), jnp.asarray(labels), beta=1.0)[1]["kl"])(jnp.asarray(clean))
  np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)
  assert np.abs(numeric).max() > 1e-3
