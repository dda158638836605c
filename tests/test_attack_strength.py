"""The attacks rank as they should on a trained model: more steps and APGD are never weaker.

A plain-CE MLP is trained in about two seconds on synthetic Fashion-MNIST-format data (the recipe
of `conftest.write_fake_fashion_mnist`: each label brightens one horizontal band), which it fits
perfectly. At eps = 0.115 it is attackable but far from broken, so every attack leaves a
different, comparable accuracy. Measured here: clean 100%, FGSM 83.6%, PGD-20 50.0%, PGD-100 48.0%,
APGD-CE-20 46.9%; the orderings also held, with no slack, for the five other seeds tried.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from act_jax import attacks

EPS = 0.115
PGD_STEP_SIZE = EPS / 4
HIDDEN = 32
TRAIN_STEPS, BATCH = 300, 128


def band_images(count: int, seed: int) -> tuple[jax.Array, jax.Array]:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, count)
  images = rng.integers(0, 100, (count, 28, 28)).astype(np.float32)
  for i, label in enumerate(labels):
    images[i, 2 * label:2 * label + 4] += 150
  return jnp.asarray(images[..., None] / 255.0), jnp.asarray(labels)


def mlp_logits(params, images: jax.Array) -> jax.Array:
  (w1, b1), (w2, b2) = params
  return jax.nn.relu(images.reshape(images.shape[0], -1) @ w1 + b1) @ w2 + b2


@pytest.fixture(scope="module")
def trained_mlp():
  train_images, train_labels = band_images(2048, seed=0)
  keys = jax.random.split(jax.random.PRNGKey(0))
  params = [(jax.random.normal(keys[0], (784, HIDDEN)) / np.sqrt(784), jnp.zeros(HIDDEN)),
            (jax.random.normal(keys[1], (HIDDEN, 10)) / np.sqrt(HIDDEN), jnp.zeros(10))]
  optimizer = optax.adam(1e-3)

  @jax.jit
  def train_step(params, opt_state, images, labels):
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        mlp_logits(p, images), labels).mean()
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for step in range(TRAIN_STEPS):
    start = step * BATCH % len(train_labels)
    params, opt_state = train_step(params, opt_state, train_images[start:start + BATCH],
                                   train_labels[start:start + BATCH])
  return params


def test_stronger_attacks_leave_lower_accuracy(trained_mlp):
  images, labels = band_images(256, seed=1)
  example_rngs = jax.random.split(jax.random.PRNGKey(1), len(labels))

  @jax.jit
  def accuracies(params, images, labels, example_rngs):
    logits_fn = lambda x: mlp_logits(params, x)
    accuracy = lambda x: jnp.mean(jnp.argmax(logits_fn(x), axis=-1) == labels)
    pgd = lambda num_steps: attacks.pgd(logits_fn, images, labels, example_rngs, eps=EPS,
                                        step_size=PGD_STEP_SIZE, num_steps=num_steps)
    return {
        "clean": accuracy(images),
        "fgsm": accuracy(attacks.fgsm(logits_fn, images, labels, eps=EPS)),
        "pgd20": accuracy(pgd(20)),
        "pgd100": accuracy(pgd(100)),
        "apgd_ce20": accuracy(attacks.apgd(logits_fn, images, labels, example_rngs, eps=EPS,
                                           num_steps=20)),
    }

  acc = {name: float(value) for name, value in
         accuracies(trained_mlp, images, labels, example_rngs).items()}
  assert acc["clean"] >= 0.95, acc
  assert acc["fgsm"] < acc["clean"], acc  # attackable at this eps
  assert 0.1 < acc["pgd20"] < 0.9, acc  # but not broken: the comparisons below mean something
  assert acc["pgd100"] <= acc["pgd20"] <= acc["fgsm"], acc
  assert acc["apgd_ce20"] <= acc["pgd20"], acc  # same budget of 20 gradient steps
