"""The Square attack: threat model, bookkeeping, gradient masking, batching, torchattacks parity."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import attacks
from act_jax.attacks import objectives
from act_jax.attacks import square_attack as square_lib

NUM_CLASSES = 10


class TinyCnn(nn.Module):
  """One 3x3 convolution and a dense layer: enough to make the window placement matter."""

  @nn.compact
  def __call__(self, images):
    hidden = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv")(images))
    return nn.Dense(NUM_CLASSES, name="dense")(hidden.reshape(hidden.shape[0], -1))


def tiny_cnn(shape=(8, 8, 3), seed=0):
  """A randomly initialised TinyCnn: (its variables, logits_fn)."""
  module = TinyCnn()
  variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)))
  return variables, functools.partial(module.apply, variables)


def linear_model(shape, seed=0, mask_gradient=False):
  """A random linear classifier; with `mask_gradient` its input gradient is zero everywhere."""
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=(int(np.prod(shape)), NUM_CLASSES)).astype(np.float32)
  bias = rng.normal(size=NUM_CLASSES).astype(np.float32)

  def logits_fn(images):
    if mask_gradient:
      images = jax.lax.stop_gradient(images)
    return images.reshape(images.shape[0], -1) @ weights + bias

  return logits_fn


def images_of(shape, count, seed=1):
  return np.random.default_rng(seed).uniform(0.0, 1.0, size=(count, *shape)).astype(np.float32)


def predictions(logits_fn, images):
  return np.array(jnp.argmax(logits_fn(jnp.asarray(images)), axis=-1))


def keys(count, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), count)


def run_square(logits_fn, images, labels, example_rngs, **kwargs):
  attack = jax.jit(lambda x, y, k: square_lib.square(logits_fn, x, y, k, **kwargs))
  return np.asarray(attack(jnp.asarray(images), jnp.asarray(labels), example_rngs))


def robust_accuracy(logits_fn, adversarial, labels):
  return float(np.mean(predictions(logits_fn, adversarial) == labels))


# The schedule.


def reference_p_selection(it, p_init):
  """AutoAttack's if-chain (resc_schedule=False), written out as the original has it."""
  for low, high, divisor in ((10, 50, 2), (50, 200, 4), (200, 500, 8), (500, 1000, 16),
                             (1000, 2000, 32), (2000, 4000, 64), (4000, 6000, 128),
                             (6000, 8000, 256)):
    if low < it <= high:
      return p_init / divisor
  return p_init / 512 if it > 8000 else p_init


def test_window_schedule_follows_autoattack():
  for it in [*range(60), 199, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000,
             6001, 8000, 8001, 9999]:
    assert square_lib.p_selection(it, 0.8) == reference_p_selection(it, 0.8), it
  # CIFAR-10: 0.8 * 1024 -> side 29 at first, 1 pixel at the end of a 10000-query budget.
  sides = [square_lib.window_side(it, 32, 32, 3) for it in (0, 10, 11, 51, 201, 4999, 9999)]
  assert sides == [29, 29, 20, 14, 10, 3, 1]
  # A window never exceeds the image, and never shrinks below one pixel.
  assert square_lib.window_side(0, 2, 2, 1, p_init=1.0) == 2
  assert square_lib.window_side(9000, 4, 4, 1) == 1


# 1. The threat model.


@pytest.mark.parametrize("model", ["linear", "cnn"])
def test_result_stays_in_the_eps_ball_and_image_range(model):
  shape, eps = (8, 8, 3), 0.1
  logits_fn = linear_model(shape) if model == "linear" else tiny_cnn(shape)[1]
  images = images_of(shape, 8)
  # Pixels at 0 and 1, where the box and the image range clip each other.
  images[:2, :, :4] = 0.0
  images[2:4, :, 4:] = 1.0
  labels = np.arange(8) % NUM_CLASSES
  adversarial = run_square(logits_fn, images, labels, keys(8), eps=eps, num_queries=100)
  assert adversarial.shape == images.shape
  assert np.all(np.abs(adversarial - images) <= eps + 1e-6)
  assert np.all((adversarial >= 0.0) & (adversarial <= 1.0))
  # Square moves pixels to the corners of the box (x +- eps, or 0 or 1 where those clip).
  moved = adversarial != images
  assert moved.any()


# 2. Bookkeeping: a point shown misclassified is never lost.


def test_an_example_shown_misclassified_is_reported_misclassified():
  shape, eps = (8, 8, 3), 0.06
  _, logits_fn = tiny_cnn(shape)
  images = images_of(shape, 32)
  labels = predictions(logits_fn, images)
  num_queries = 100
  trace = jax.jit(lambda x, y, k: square_lib.square_run(
      logits_fn, x, y, k, eps=eps, num_queries=num_queries, record=True))(
          jnp.asarray(images), jnp.asarray(labels), keys(32))
  proposed = np.asarray(trace.proposed_margins)  # [N, B], +inf once no longer attacked
  best = np.asarray(trace.margin)
  start_margin = np.asarray(square_lib.margin(
      logits_fn(jnp.clip(jnp.asarray(images) + eps * _stripes_of(keys(32), shape), 0, 1)),
      jnp.asarray(labels)))

  shown_fooled = (proposed <= 0).any(axis=0) | (start_margin <= 0)
  assert 0 < shown_fooled.sum() < len(labels), "the test needs fooled and unfooled examples"
  # The best margin is the least margin seen; after the first point <= 0 nothing is proposed.
  np.testing.assert_array_equal(best, np.minimum(start_margin, proposed.min(axis=0)))
  first_fooled = np.argmax(proposed <= 0, axis=0)
  for example in np.flatnonzero((proposed <= 0).any(axis=0)):
    assert np.all(np.isinf(proposed[first_fooled[example] + 1:, example]))
  # And the reported point is the one that fooled the model, by the margin and by the argmax.
  assert np.all(best[shown_fooled] <= 0)
  final = predictions(logits_fn, np.asarray(trace.adversarial))
  assert np.all(final[shown_fooled] != labels[shown_fooled])
  adversarial = run_square(logits_fn, images, labels, keys(32), eps=eps, num_queries=num_queries)
  assert np.all(predictions(logits_fn, adversarial)[shown_fooled] != labels[shown_fooled])
  assert np.all(predictions(logits_fn, adversarial)[~shown_fooled] == labels[~shown_fooled])


def _stripes_of(example_rngs, shape):
  _, width, channels = shape
  return square_lib.per_example_draws.initial_signs(example_rngs, width, channels)[:, None]


def test_clean_misclassified_examples_are_returned_unchanged():
  shape = (8, 8, 1)
  logits_fn = linear_model(shape)
  images = images_of(shape, 6)
  clean = predictions(logits_fn, images)
  labels = (clean + 1) % NUM_CLASSES  # every example is wrong on its clean input
  adversarial = run_square(logits_fn, images, labels, keys(6), eps=0.1, num_queries=20)
  np.testing.assert_array_equal(adversarial, images)


def test_restarts_only_add_fooled_examples():
  shape, eps = (8, 8, 3), 0.05
  _, logits_fn = tiny_cnn(shape)
  images = images_of(shape, 32)
  labels = predictions(logits_fn, images)
  one = run_square(logits_fn, images, labels, keys(32), eps=eps, num_queries=60)
  three = run_square(logits_fn, images, labels, keys(32), eps=eps, num_queries=60, restarts=3)
  fooled_once = predictions(logits_fn, one) != labels
  fooled_thrice = predictions(logits_fn, three) != labels
  assert np.all(fooled_thrice[fooled_once])
  assert fooled_thrice.sum() > fooled_once.sum()
  assert np.all(np.abs(three - images) <= eps + 1e-6)


# 3. Gradient masking: zero input gradients stop PGD, not Square.


def test_gradient_masked_model_falls_to_square_but_not_to_pgd():
  shape, eps, count = (16, 16, 1), 0.05, 64
  logits_fn = linear_model(shape, mask_gradient=True)
  images = images_of(shape, count)
  labels = predictions(logits_fn, images)  # clean accuracy 1
  gradient = jax.grad(lambda x: logits_fn(x).sum())(jnp.asarray(images))
  assert not np.any(np.asarray(gradient))
  pgd_adversarial = attacks.pgd(logits_fn, jnp.asarray(images), jnp.asarray(labels), keys(count),
                                eps=eps, step_size=eps / 4, num_steps=10)
  square_adversarial = run_square(logits_fn, images, labels, keys(count), eps=eps,
                                  num_queries=300)
  # PGD cannot move: only its random start changes the prediction, of a few examples at most.
  # Square's structured search fools most (measured: 97% robust under PGD, 22% under Square).
  assert robust_accuracy(logits_fn, pgd_adversarial, labels) >= 0.85
  assert robust_accuracy(logits_fn, square_adversarial, labels) <= 0.45


# 4. Batching: an example's result is its own.


def test_result_does_not_depend_on_the_batch():
  shape, eps, count = (8, 8, 3), 0.05, 6
  _, logits_fn = tiny_cnn(shape)
  images = images_of(shape, count)
  labels = predictions(logits_fn, images)
  example_rngs = keys(count)
  batched = run_square(logits_fn, images, labels, example_rngs, eps=eps, num_queries=200)
  order = np.array([3, 0, 5, 1, 4, 2])
  permuted = run_square(logits_fn, images[order], labels[order], example_rngs[order], eps=eps,
                        num_queries=200)
  np.testing.assert_allclose(permuted, batched[order], atol=1e-6)
  alone = [run_square(logits_fn, images[i:i + 1], labels[i:i + 1], example_rngs[i:i + 1],
                      eps=eps, num_queries=200)[0] for i in range(count)]
  np.testing.assert_allclose(np.stack(alone), batched, atol=1e-6)
  fooled = predictions(logits_fn, batched) != labels
  assert 0 < fooled.sum() < count, "the test needs fooled and unfooled examples"


# 5. Parity with torchattacks 3.5.1 (the AutoAttack Linf code, batch-shared draws).


def torch_twin(variables, shape):
  """The TinyCnn as a torch module (NCHW) with the same weights."""
  torch = pytest.importorskip("torch")
  height, width, channels = shape
  params = variables["params"]
  conv_kernel = np.asarray(params["conv"]["kernel"])  # [3, 3, C, 4]
  dense_kernel = np.asarray(params["dense"]["kernel"])  # [H * W * 4, classes], (h, w, c) order
  model = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * height * width, NUM_CLASSES))
  with torch.no_grad():
    model[0].weight.copy_(torch.from_numpy(conv_kernel.transpose(3, 2, 0, 1).copy()))
    model[0].bias.copy_(torch.from_numpy(np.array(params["conv"]["bias"])))
    # torch flattens (c, h, w), flax (h, w, c).
    dense = dense_kernel.reshape(height, width, 4, NUM_CLASSES).transpose(3, 2, 0, 1)
    model[3].weight.copy_(torch.from_numpy(dense.reshape(NUM_CLASSES, -1).copy()))
    model[3].bias.copy_(torch.from_numpy(np.array(params["dense"]["bias"])))
  return model.eval()


def torch_square(model, eps, num_queries):
  torchattacks = pytest.importorskip("torchattacks")
  return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=num_queries, n_restarts=1,
                             p_init=0.8, loss="margin", resc_schedule=False, seed=0)


def nchw(images):
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def nhwc(images):
  return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def record_torch_run(attack, image, label):
  """Runs torchattacks on ONE example, recording its draws and its single run's x_best.

  Returns (stripes [W, C], tops, lefts, signs [n, C], x_best NHWC [H, W, C], queries).
  With a batch of one, the draws the original shares over the batch are this example's own.
  """
  torch = pytest.importorskip("torch")
  record = {"choice": [], "int": []}
  random_choice, random_int, single_run = (attack.random_choice, attack.random_int,
                                           attack.attack_single_run)

  def recording_choice(shape):
    drawn = random_choice(shape)
    record["choice"].append(drawn.numpy().copy())
    return drawn

  def recording_int(low=0, high=1, shape=(1,)):
    drawn = random_int(low, high, list(shape))
    record["int"].append(int(drawn.item()))
    return drawn

  def recording_run(x, y):
    queries, x_best = single_run(x, y)
    record["run"] = (queries.numpy().copy(), x_best.numpy().copy())
    return queries, x_best

  attack.random_choice, attack.random_int = recording_choice, recording_int
  attack.attack_single_run = recording_run
  attack(torch.from_numpy(nchw(image[None])), torch.tensor([int(label)]))
  stripes = record["choice"][0][0, :, 0, :].T  # [1, C, 1, W] -> [W, C]
  signs = np.stack([s[:, 0, 0] for s in record["choice"][1:]]).reshape(-1, image.shape[-1])
  queries, x_best = record["run"]
  return (stripes, np.array(record["int"][0::2]), np.array(record["int"][1::2]), signs,
          nhwc(x_best)[0], int(queries[0]))


def injected_draws(stripes, tops, lefts, signs):
  """Draws that replay recorded tables [B, ...] (iterations past a table's end are never used)."""
  stripes, tops, lefts, signs = map(jnp.asarray, (stripes, tops, lefts, signs))

  def window(example_rngs, iteration, side, height, width, channels):
    del example_rngs, side, height, width, channels
    return tops[:, iteration], lefts[:, iteration], signs[:, iteration]

  return square_lib.Draws(lambda example_rngs, width, channels: stripes, window)


def test_trajectory_matches_torchattacks_with_the_same_draws():
  pytest.importorskip("torch")
  pytest.importorskip("torchattacks")
  shape, eps, num_queries, count = (8, 8, 3), 0.05, 200, 6
  variables, logits_fn = tiny_cnn(shape)
  model = torch_twin(variables, shape)
  images = images_of(shape, count, seed=3)
  labels = predictions(logits_fn, images)

  recorded = [record_torch_run(torch_square(model, eps, num_queries), images[i], labels[i])
              for i in range(count)]
  pad = lambda table, fill: np.stack([
      np.concatenate([t, np.full((num_queries - len(t), *t.shape[1:]), fill, t.dtype)])
      for t in table])
  stripes = np.stack([r[0] for r in recorded])
  tops, lefts = pad([r[1] for r in recorded], 0), pad([r[2] for r in recorded], 0)
  signs = pad([r[3] for r in recorded], 1.0)
  torch_best = np.stack([r[4] for r in recorded])
  torch_queries = np.array([r[5] for r in recorded])

  trace = jax.jit(lambda x, y: square_lib.square_run(
      logits_fn, x, y, keys(count), eps=eps, num_queries=num_queries,
      draws=injected_draws(stripes, tops, lefts, signs)))(jnp.asarray(images), jnp.asarray(labels))
  np.testing.assert_allclose(np.asarray(trace.adversarial), torch_best, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(trace.queries), torch_queries)
  jax_fooled = predictions(logits_fn, np.asarray(trace.adversarial)) != labels
  torch_fooled = predictions(logits_fn, torch_best) != labels
  np.testing.assert_array_equal(jax_fooled, torch_fooled)
  assert 0 < jax_fooled.sum() < count, "the test needs fooled and unfooled examples"


def test_robust_accuracy_matches_torchattacks_statistically():
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchattacks")
  shape, eps, num_queries, count = (8, 8, 3), 0.04, 200, 128
  variables, logits_fn = tiny_cnn(shape)
  model = torch_twin(variables, shape)
  images = images_of(shape, count, seed=4)
  labels = predictions(logits_fn, images)

  with torch.no_grad():
    torch_adversarial = torch_square(model, eps, num_queries)(
        torch.from_numpy(nchw(images)), torch.from_numpy(labels)).numpy()
  torch_accuracy = robust_accuracy(logits_fn, nhwc(torch_adversarial), labels)
  jax_accuracy = robust_accuracy(
      logits_fn, run_square(logits_fn, images, labels, keys(count), eps=eps,
                            num_queries=num_queries), labels)
  # The two draw differently (torch shares one window per iteration over the batch), so each
  # robust accuracy is a binomial estimate over `count` examples. Three standard errors of the
  # difference of two independent such estimates bound it; the estimates share their examples,
  # which correlates them positively, so the true spread is smaller and the bound conservative.
  pooled = (torch_accuracy + jax_accuracy) / 2
  tolerance = 3 * np.sqrt(2 * pooled * (1 - pooled) / count)
  assert 0.1 < pooled < 0.9, "the test needs a budget at which Square fools some examples"
  assert abs(torch_accuracy - jax_accuracy) <= tolerance, (torch_accuracy, jax_accuracy)


def test_the_default_schedule_runs_jitted():
  """The default budget (5000 queries) compiles to one rolled loop and runs in-graph."""
  shape = (8, 8, 1)
  logits_fn = linear_model(shape)
  images = images_of(shape, 4)
  labels = predictions(logits_fn, images)
  adversarial = run_square(logits_fn, images, labels, keys(4), eps=0.02)
  assert np.all(np.abs(adversarial - images) <= 0.02 + 1e-6)
  assert objectives.misclassified(logits_fn(jnp.asarray(adversarial)),
                                  jnp.asarray(labels)).shape == (4,)
