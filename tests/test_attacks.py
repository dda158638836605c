"""The attacks: one step against an analytic NumPy gradient, and the threat-model constraints."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import attacks, models
from act_jax.attacks import objectives, parts, targets

from helpers import np_log_softmax

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
  dlogits = ((1 - alpha) * (probs - onehot) / batch
             + kl_weight * (probs - np_softmax(natural_logits)))
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


def test_one_trades_attack_step_matches_numpy(problem):
  """TRADES' adversary: d/dlogits' of sum KL(softmax(f(x)) || softmax(f(x'))) is q' - p."""
  images, labels, weights, bias, _ = problem
  rng = keys(3)
  eps, step_size = 0.1, 0.03
  adversarial = attacks.trades_training_attack(linear_model(weights, bias), jnp.asarray(images),
                                               rng, eps=eps, step_size=step_size, num_steps=1)
  start = np.asarray(parts.gaussian_init(rng, jnp.asarray(images), 0.001))
  batch = len(labels)
  clean_probs = np_softmax(images.reshape(batch, -1).astype(np.float64) @ weights + bias)
  adversarial_probs = np_softmax(start.reshape(batch, -1).astype(np.float64) @ weights + bias)
  gradient = ((adversarial_probs - clean_probs) @ weights.T).reshape(start.shape)
  stepped = start + step_size * np.sign(gradient)
  expected = np.clip(np.clip(stepped, images - eps, images + eps), 0.0, 1.0)
  np.testing.assert_allclose(adversarial, expected, atol=1e-6)


def test_one_pgd_step_matches_numpy(problem):
  images, labels, weights, bias, _ = problem
  rng = keys(4)
  eps, step_size = 0.1, 0.03
  adversarial = attacks.pgd(linear_model(weights, bias), jnp.asarray(images),
                                 jnp.asarray(labels), rng, eps=eps, step_size=step_size,
                                 num_steps=1)
  noise = np.stack([np.asarray(jax.random.uniform(k, images.shape[1:], minval=-eps, maxval=eps))
                    for k in rng])
  start = np.clip(images + noise, 0, 1)
  logits = start.reshape(len(labels), -1) @ weights + bias
  gradient = ((np_softmax(logits) - np.eye(NUM_CLASSES)[labels]) @ weights.T).reshape(images.shape)
  stepped = start + step_size * np.sign(gradient)
  expected = np.clip(np.clip(stepped, images - eps, images + eps), 0, 1)
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
    adversarial = attacks.pgd(linear_model(weights, bias), images, jnp.asarray(labels),
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
  images, labels, weights, bias, _natural_logits = problem

  def attacked_loss(images):
    adversarial = attacks.pgd(linear_model(weights, bias), images, jnp.asarray(labels),
                                   keys(0), eps=0.1, step_size=0.01, num_steps=3)
    return jnp.sum(adversarial)

  assert float(jnp.abs(jax.jit(jax.grad(attacked_loss))(jnp.asarray(images))).max()) == 0.0


# The attack library: every attack, its parts, and the per-example losses.


EPS = {"linf": 0.05, "l2": 0.3}
ATTACKS = {
    "pgd_linf": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["linf"], step_size=0.02,
                                               num_steps=4),
    "pgd_l2": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["l2"], step_size=0.1,
                                             num_steps=4, norm="l2"),
    "pgd_dlr_restarts": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["linf"], step_size=0.02,
                                                       num_steps=3, loss="dlr", restarts=2),
    "pgd_cw_gaussian": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["linf"], step_size=0.02,
                                                      num_steps=3, loss="cw_margin",
                                                      init="gaussian"),
    "pgd_random_target": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["linf"],
                                                        step_size=0.02, num_steps=4,
                                                        target="random"),
    "pgd_least_likely_l2": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS["l2"], step_size=0.1,
                                                          num_steps=4, norm="l2",
                                                          target="least_likely", init="none"),
    "fgsm": lambda f, x, y, k: attacks.fgsm(f, x, y, eps=EPS["linf"]),
    "apgd_ce": lambda f, x, y, k: attacks.apgd(f, x, y, k, eps=EPS["linf"], num_steps=5),
    "apgd_dlr_l2": lambda f, x, y, k: attacks.apgd(f, x, y, k, eps=EPS["l2"], num_steps=5,
                                                   norm="l2", loss="dlr"),
    "apgd_targeted": lambda f, x, y, k: attacks.apgd_targeted(f, x, y, k, eps=EPS["linf"],
                                                              num_steps=4, num_target_classes=2),
}


def norm_of(attack):
  return "l2" if attack.endswith("l2") else "linf"


@pytest.fixture(scope="module")
def edge_problem():
  """Images with pixels on and near the borders of [0, 1], where clipping matters."""
  rng = np.random.default_rng(2)
  images = rng.choice([0.0, 0.02, 0.5, 0.98, 1.0], size=(4, 3, 3, 2)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=4)
  weights = rng.normal(size=(18, NUM_CLASSES)).astype(np.float32)
  bias = rng.normal(size=NUM_CLASSES).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(labels), linear_model(weights, bias)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack_stays_in_its_threat_model_under_jit(edge_problem, attack):
  images, labels, logits_fn = edge_problem
  adversarial = jax.jit(lambda x, y, k: ATTACKS[attack](logits_fn, x, y, k))(images, labels,
                                                                             keys(0))
  assert adversarial.shape == images.shape and adversarial.dtype == jnp.float32
  delta = np.asarray(adversarial - images).reshape(len(labels), -1)
  eps = EPS[norm_of(attack)]
  size = np.abs(delta).max(axis=1) if norm_of(attack) == "linf" else np.linalg.norm(delta, axis=1)
  assert size.max() <= eps + 1e-5
  assert size.max() > eps / 4  # it did move
  assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0


@pytest.mark.parametrize("attack", [
    functools.partial(attacks.pgd, eps=EPS["linf"], step_size=0.02, num_steps=4),
    functools.partial(attacks.pgd, eps=EPS["linf"], step_size=0.02, num_steps=3, loss="dlr",
                      restarts=2),
    functools.partial(attacks.apgd, eps=EPS["linf"], num_steps=5)], ids=["pgd", "restarts", "apgd"])
def test_unrolling_does_not_change_an_attack(edge_problem, attack):
  """`unroll` (asked for on CPU) changes how the loop compiles, not what it computes."""
  images, labels, logits_fn = edge_problem
  run = lambda unroll: jax.jit(lambda x, y, k: attack(logits_fn, x, y, k, unroll=unroll))(
      images, labels, keys(4))
  np.testing.assert_allclose(run(True), run(False), atol=1e-6)


def test_fgsm_is_one_full_eps_sign_step_from_x(problem):
  images, labels, weights, bias, _ = problem
  eps = 0.07
  adversarial = attacks.fgsm(linear_model(weights, bias), jnp.asarray(images), jnp.asarray(labels),
                             eps=eps)
  logits = images.reshape(len(labels), -1) @ weights + bias
  gradient = ((np_softmax(logits) - np.eye(NUM_CLASSES)[labels]) @ weights.T).reshape(images.shape)
  expected = np.clip(images + eps * np.sign(gradient), 0, 1)
  np.testing.assert_allclose(adversarial, expected, atol=1e-6)


def test_l2_projection_matches_numpy():
  rng = np.random.default_rng(3)
  images = rng.uniform(0.3, 0.7, size=(6, 4, 4, 1)).astype(np.float32)
  eps = 0.5
  radii = np.array([0.0, 0.2, 0.49, 0.51, 1.0, 3.0], np.float32)
  directions = rng.normal(size=images.shape).astype(np.float32)
  directions /= np.linalg.norm(directions.reshape(6, -1), axis=1)[:, None, None, None]
  deltas = radii[:, None, None, None] * directions
  project = parts.l2_projection(jnp.asarray(images), eps)
  projected = np.asarray(project(jnp.asarray(images + deltas)))
  expected = images + deltas * np.minimum(1.0, eps / np.maximum(radii, 1e-30))[:, None, None, None]
  np.testing.assert_allclose(projected, np.clip(expected, 0, 1), atol=1e-6)
  inside = radii <= eps
  np.testing.assert_allclose(projected[inside], (images + deltas)[inside], atol=1e-6)  # unchanged
  outside_norms = np.linalg.norm((projected - images)[~inside].reshape((~inside).sum(), -1), axis=1)
  np.testing.assert_allclose(outside_norms, eps, rtol=1e-5)  # on the sphere, same direction
  # Clipping to [0, 1] afterwards can only bring a point closer to its image.
  far = jnp.asarray(images) + 10 * jnp.asarray(directions)
  clipped = parts.l2_projection(jnp.asarray(images), eps)(far)
  assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
  assert float(parts.l2_norm(clipped - images).max()) <= eps + 1e-6


def test_l2_step_and_start():
  gradient = jnp.stack([jnp.full((2, 2, 1), 3.0), jnp.zeros((2, 2, 1))])
  stepped = parts.l2_gradient_step(jnp.zeros_like(gradient), gradient, jnp.asarray([0.5, 0.5]))
  np.testing.assert_allclose(parts.l2_norm(stepped), [0.5, 0.0])  # a zero gradient does not move
  np.testing.assert_allclose(stepped[0], 0.25)
  images = jnp.full((64, 3, 3, 1), 0.5)
  start = parts.l2_random_init(keys(1, 64), images, 0.4)
  radii = np.asarray(parts.l2_norm(start - images))
  assert radii.max() <= 0.4 + 1e-6 and radii.min() < 0.1 and radii.max() > 0.3  # radius ~ U(0, eps)
  assert float(start.min()) >= 0 and float(start.max()) <= 1


def test_keep_worst_case_prefers_misclassified_then_higher_loss():
  best = parts.Candidate(jnp.zeros((5, 1)), jnp.asarray([1.0, 1.0, 1.0, 1.0, 5.0]),
                         jnp.asarray([False, False, True, True, True]))
  candidate = parts.Candidate(jnp.ones((5, 1)), jnp.asarray([0.5, 2.0, 0.5, 1.0, 9.0]),
                              jnp.asarray([True, False, False, True, True]))
  kept = parts.keep_worst_case(best, candidate)
  # 0: newly misclassified; 1: higher loss; 2: would lose misclassification; 3: tie keeps best.
  np.testing.assert_array_equal(kept.adversarial[:, 0], [1, 1, 0, 0, 1])
  np.testing.assert_array_equal(kept.loss, [0.5, 2.0, 1.0, 1.0, 9.0])
  np.testing.assert_array_equal(kept.wrong, [True, False, True, True, True])


def test_restarts_never_lose_a_misclassification(edge_problem):
  images, labels, logits_fn = edge_problem
  wrong = {}
  for restarts in (1, 4):
    adversarial = jax.jit(lambda k, restarts=restarts: attacks.pgd(
        logits_fn, images, labels, k, eps=0.1, step_size=0.01, num_steps=2, restarts=restarts))(
            keys(9))
    wrong[restarts] = np.asarray(jnp.argmax(logits_fn(adversarial), -1) != labels)
  assert (wrong[4] >= wrong[1]).all()


@pytest.mark.parametrize("attack", ["pgd_random_target", "apgd_targeted"])
def test_attacks_do_not_depend_on_batch_splitting(edge_problem, attack):
  images, labels, logits_fn = edge_problem
  attack_fn = jax.jit(lambda x, y, k: ATTACKS[attack](logits_fn, x, y, k))
  whole = attack_fn(images, labels, keys(4))
  halves = [attack_fn(images[i:i + 2], labels[i:i + 2], keys(4)[i:i + 2]) for i in (0, 2)]
  np.testing.assert_allclose(whole, jnp.concatenate(halves), atol=1e-6)


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_t_batched_targets_equal_targets_in_turn(edge_problem, restarts):
  """The CPU layout (all targets as one batch) computes the accelerator one (a loop over them)."""
  images, labels, logits_fn = edge_problem
  run = lambda unroll: jax.jit(lambda x, y, k: attacks.apgd_targeted(
      logits_fn, x, y, k, eps=EPS["linf"], num_steps=10, num_target_classes=3,
      restarts=restarts, unroll=unroll))(images, labels, keys(4))
  np.testing.assert_allclose(run(True), run(False), atol=1e-6)


def test_targeted_attacks_move_towards_the_target(problem):
  """Targeted PGD raises p(target) (it descends CE to the target); APGD-T its targeted DLR."""
  images, labels, weights, bias, _ = problem
  logits_fn = linear_model(weights, bias)
  images, labels, rng = jnp.asarray(images), jnp.asarray(labels), keys(11)
  clean = logits_fn(images)
  rows = jnp.arange(len(labels))

  @jax.jit
  def run(images, labels, rng):
    pgd = lambda target: attacks.pgd(logits_fn, images, labels, rng, eps=0.1, step_size=0.02,
                                     num_steps=8, target=target)
    return pgd("random"), pgd("least_likely"), attacks.apgd_targeted(
        logits_fn, images, labels, rng, eps=0.1, num_steps=8, num_target_classes=1)

  random_adv, least_likely_adv, apgd_t_adv = run(images, labels, rng)
  for adversarial, target in ((random_adv, targets.random_targets(rng, labels, NUM_CLASSES)),
                              (least_likely_adv, targets.least_likely_targets(clean, labels))):
    before = jax.nn.softmax(clean)[rows, target]
    after = jax.nn.softmax(logits_fn(adversarial))[rows, target]
    assert (np.asarray(after) > np.asarray(before)).all()
  top_target = targets.ranked_targets(clean, labels)[:, 0]
  before = objectives.targeted_dlr(clean, labels, top_target)
  after = objectives.targeted_dlr(logits_fn(apgd_t_adv), labels, top_target)
  assert (np.asarray(after) > np.asarray(before)).all()


def test_targets_are_never_the_true_class():
  logits = jnp.asarray([[0.0, 3.0, 1.0, -2.0], [5.0, 4.0, 3.0, 2.0], [1.0, 1.0, -1.0, 0.0]])
  labels = jnp.asarray([3, 0, 1])
  np.testing.assert_array_equal(targets.least_likely_targets(logits, labels), [0, 3, 2])
  np.testing.assert_array_equal(targets.ranked_targets(logits, labels),
                                [[1, 2, 0], [1, 2, 3], [0, 3, 2]])
  drawn = targets.random_targets(keys(0, 300), jnp.zeros(300, jnp.int32), 4)
  assert set(np.asarray(drawn).tolist()) == {1, 2, 3}


def np_losses(logits, labels, targets_):
  """The per-example losses written out from their definitions."""
  rows = np.arange(len(labels))
  ordered = np.sort(logits, axis=1)[:, ::-1]  # pi: descending
  true, target = logits[rows, labels], logits[rows, targets_]
  other = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(axis=1)
  return {
      "ce": -np_log_softmax(logits)[rows, labels],
      "cw_margin": other - true,
      "dlr": -(true - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12),
      "targeted_ce": np_log_softmax(logits)[rows, targets_],
      "targeted_dlr": -(true - target) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2
                                          + 1e-12),
  }


def test_losses_match_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(16, 6)).astype(np.float32) * 3
  labels = rng.integers(0, 6, size=16)
  targets_ = (labels + rng.integers(1, 6, size=16)) % 6
  logits[0, labels[0]] = logits[0].max() + 1  # one correctly classified example at least
  expected = np_losses(logits.astype(np.float64), labels, targets_)
  assert set(objectives.LOSSES) == set(expected)
  for name, loss_fn in objectives.LOSSES.items():
    got = loss_fn(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(targets_))
    assert got.shape == (16,)
    np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # DLR is invariant to shifting and scaling the logits.
  np.testing.assert_allclose(objectives.dlr(3 * jnp.asarray(logits) + 7, jnp.asarray(labels)),
                             expected["dlr"], rtol=1e-4, atol=1e-5)
  objective = objectives.summed_objective(lambda x: x, objectives.cw_margin, jnp.asarray(labels))
  np.testing.assert_allclose(objective(jnp.asarray(logits)), expected["cw_margin"].sum(), rtol=1e-5)


def test_small_cnn_attacks_compile_and_run():
  """The attacks on a BatchNorm CNN in eval mode, as evaluation runs them."""
  model = models.build_model("small_cnn", num_classes=10, base_width=4)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  labels = jnp.arange(4)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(images)
  logits_fn = lambda x: model.apply(variables, x, train=False)

  @jax.jit
  def run(images, labels, rng):
    return (attacks.apgd(logits_fn, images, labels, rng, eps=0.03, num_steps=3, loss="dlr"),
            attacks.pgd(logits_fn, images, labels, rng, eps=0.5, step_size=0.2, num_steps=2,
                        norm="l2", target="least_likely"))

  for adversarial in run(images, labels, keys(2)):
    assert adversarial.shape == images.shape and bool(jnp.isfinite(adversarial).all())
