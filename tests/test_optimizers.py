"""The optimiser against a NumPy transcription of torch.optim.SGD, and the lr schedule's rules."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from act_jax import optimizers


def optim_config(**overrides):
  fields = dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4, lr_decay_epochs=(2,),
                lr_decay_factor=0.2, base_batch_size=None, warmup_epochs=0.0)
  return ml_collections.ConfigDict({**fields, **overrides})


def test_sgd_matches_torch_sgd_with_coupled_weight_decay():
  """torch.optim.SGD: g += wd * p; buf = m * buf + g (buf = g at first); p -= lr * buf."""
  config = optim_config(lr_decay_epochs=(1,))  # the lr drops after 3 of the 5 steps
  tx = optimizers.sgd_with_coupled_weight_decay(
      config, optimizers.learning_rate_schedule(config, 3))
  rng = np.random.default_rng(0)
  params = rng.normal(size=4).astype(np.float32)
  gradients = rng.normal(size=(5, 4)).astype(np.float32)
  expected, buffer = params.astype(np.float64), None
  for step, gradient in enumerate(gradients):
    gradient = gradient + config.weight_decay * expected
    buffer = gradient if buffer is None else config.momentum * buffer + gradient
    expected = expected - config.learning_rate * (0.2 if step >= 3 else 1.0) * buffer
  actual, state = jnp.asarray(params), tx.init(jnp.asarray(params))
  for gradient in gradients:
    updates, state = tx.update(jnp.asarray(gradient), state, actual)
    actual = optax.apply_updates(actual, updates)
  np.testing.assert_allclose(actual, expected, rtol=1e-5)


def test_schedule_decays_at_epoch_boundaries():
  schedule = optimizers.learning_rate_schedule(optim_config(lr_decay_epochs=(1, 2)), 10)
  assert [float(schedule(step)) for step in (0, 9, 10, 19, 20)] == pytest.approx(
      [0.1, 0.1, 0.02, 0.02, 0.004])


def test_linear_scaling_rule():
  config = optim_config(base_batch_size=256)
  assert optimizers.peak_learning_rate(config, 1024) == pytest.approx(0.4)
  assert optimizers.peak_learning_rate(optim_config(), 1024) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="base_batch_size"):
    optimizers.peak_learning_rate(config, None)


def test_warmup_ramps_linearly_then_follows_the_decay():
  schedule = optimizers.learning_rate_schedule(
      optim_config(base_batch_size=256, warmup_epochs=0.5, lr_decay_epochs=(2,)), 10,
      global_batch_size=512)
  values = [float(schedule(step)) for step in (0, 1, 4, 5, 19, 20)]
  assert values == pytest.approx([0.04, 0.08, 0.2, 0.2, 0.2, 0.04])
