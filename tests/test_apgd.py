"""APGD against the published schedule and a NumPy re-implementation of its step-size rule."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import attacks
from act_jax.attacks import apgd_attack as apgd_lib
from act_jax.attacks import objectives as lib_objectives
from act_jax.attacks import parts

from helpers import steep_mlp_problem

NUM_CLASSES = 3
HIDDEN = 8


def np_checkpoints(num_steps):
  """Croce & Hein's recurrence in floating point, rounded before the ceil (0.41 * 100 is 41.0...01).
  """
  p = [0.0, 0.22]
  while p[-1] <= 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  w = [math.ceil(round(pj * num_steps, 6)) for pj in p]
  return sorted({wj for wj in w if wj <= num_steps})


def test_checkpoints_follow_the_published_schedule():
  assert attacks.apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
  for num_steps in (1, 2, 5, 10, 20, 37, 50, 100, 250, 1000):
    assert attacks.apgd_checkpoints(num_steps) == np_checkpoints(num_steps), num_steps


def test_step_size_rule_conditions():
  halve = lambda **kw: np.asarray(apgd_lib.halve_step_size(rho=0.75, **{
      k: jnp.asarray(v) for k, v in kw.items()}))
  common = dict(gap=np.float32(8), best_loss_at_last_checkpoint=np.float32([1.0, 1.0, 1.0, 1.0]))
  # Condition 1: fewer than 0.75 * 8 = 6 increases. Condition 2: not halved last time, no gain.
  result = halve(increases=np.int32([5, 6, 6, 6]), best_loss=np.float32([2.0, 2.0, 1.0, 1.0]),
                 halved_at_last_checkpoint=np.bool_([False, False, False, True]), **common)
  np.testing.assert_array_equal(result, [True, False, True, False])


# A toy "model": a tanh MLP on 2-pixel images, with its CE input gradient written out in NumPy.
# APGD's decisions compare losses, and near a local maximum consecutive losses differ by less than
# float32 resolves, so the comparison with float64 NumPy runs the JAX side in float64 too. Once an
# iterate has converged, even float64 losses tie to the last bits, and the two implementations may
# order them differently; examples whose run ever compared such a near-tie are left out.
NEAR_TIE = 1e-12


@pytest.fixture(scope="module")
def toy():
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(2, HIDDEN)) * 16  # steep, so the loss surface has many local maxima
  b1 = rng.normal(size=HIDDEN)
  w2 = rng.normal(size=(HIDDEN, NUM_CLASSES)) * 2
  b2 = rng.normal(size=NUM_CLASSES)
  images = rng.uniform(0.1, 0.9, size=(64, 1, 1, 2))
  labels = rng.integers(0, NUM_CLASSES, size=64)
  return w1, b1, w2, b2, images, labels


def toy_evaluate(w1, b1, w2, b2, labels):
  """The JAX twin of `np_toy_evaluate` for a batch, in the dtype of the inputs."""

  def ce(x):
    z = jnp.tanh(x.reshape(x.shape[0], 2) @ w1 + b1) @ w2 + b2
    per_example = -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=-1)[:, 0]
    return per_example.sum(), (per_example, jnp.argmax(z, axis=-1) != labels)

  def evaluate(x):
    gradient, (per_example, wrong) = jax.grad(ce, has_aux=True)(x)
    return per_example, wrong, gradient

  return evaluate


def np_toy_evaluate(w1, b1, w2, b2, x, label):
  """(CE, misclassified, dCE/dx) for one 2-pixel image."""
  h = np.tanh(x @ w1 + b1)
  z = h @ w2 + b2
  log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
  dz = np.exp(log_p) - np.eye(NUM_CLASSES)[label]
  return -log_p[label], z.argmax() != label, w1 @ ((1 - h**2) * (w2 @ dz))


def np_apgd(evaluate, image, start, *, eps, num_steps, norm, rho=0.75, momentum=0.75):
  """APGD for one example, written from the paper's Algorithm 1 with the rules of `apgd_attack`.

  Returns the step size of every iteration, the best point and loss, the returned (worst-case)
  point, whether it is misclassified, which halving conditions fired, and whether any decision
  compared two losses too close for float64 to order the same way in every implementation.
  """
  if norm == "linf":
    project = lambda v: np.clip(np.clip(v, image - eps, image + eps), 0, 1)
    direction = np.sign
  else:
    def project(v):
      delta = v - image
      norm_ = np.linalg.norm(delta)
      return np.clip(image + (delta * eps / norm_ if norm_ > eps else delta), 0, 1)
    direction = lambda g: g / np.linalg.norm(g) if np.linalg.norm(g) > 0 else 0 * g
  checkpoints = np_checkpoints(num_steps)
  x = previous = start
  loss, wrong, grad = evaluate(x)
  best, best_loss, best_grad = x, loss, grad
  worst, worst_loss, worst_wrong = x, loss, wrong
  eta, increases, last_best_loss, halved_last = 2 * eps, 0, loss, True
  etas, fired, ambiguous = [], set(), False
  close = lambda a, b: 0 < abs(a - b) <= NEAR_TIE * max(abs(a), abs(b), 1.0)
  for k in range(num_steps):
    etas.append(eta)
    a = 1.0 if k == 0 else momentum
    z = project(x + eta * direction(grad))
    new = project(x + a * (z - x) + (1 - a) * (x - previous))
    new_loss, new_wrong, new_grad = evaluate(new)
    ambiguous |= close(new_loss, loss) or close(new_loss, best_loss) or close(new_loss, worst_loss)
    if (new_wrong and not worst_wrong) or (new_wrong == worst_wrong and new_loss > worst_loss):
      worst, worst_loss, worst_wrong = new, new_loss, new_wrong
    increases += new_loss > loss
    if new_loss > best_loss:
      best, best_loss, best_grad = new, new_loss, new_grad
    previous, x, loss, grad = x, new, new_loss, new_grad
    if k + 1 in checkpoints[1:]:
      gap = k + 1 - checkpoints[checkpoints.index(k + 1) - 1]
      oscillating = increases < rho * gap
      stalled = not halved_last and best_loss <= last_best_loss
      fired |= {"oscillating"} if oscillating else set()
      fired |= {"stalled"} if stalled and not oscillating else set()
      if oscillating or stalled:
        eta /= 2
        x = previous = best  # restart from the best point, without momentum
        loss, grad = best_loss, best_grad
      increases, last_best_loss, halved_last = 0, best_loss, oscillating or stalled
  return np.array(etas), best, best_loss, worst, worst_wrong, fired, ambiguous


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 0.3)])
def test_apgd_run_matches_numpy(toy, norm, eps):
  w1, b1, w2, b2, images, labels = toy
  num_steps = 40
  keys = jax.random.split(jax.random.PRNGKey(7), len(labels))
  with jax.enable_x64(True):
    images64 = jnp.asarray(images, jnp.float64)
    start = parts.random_init(norm, keys, images64, eps)
    evaluate = toy_evaluate(*(jnp.asarray(p, jnp.float64) for p in (w1, b1, w2, b2)),
                            jnp.asarray(labels))
    trace = jax.jit(lambda start: apgd_lib._apgd_run(
        evaluate, start, parts.projection(norm, images64, eps), parts.step_rule(norm), eps=eps,
        num_steps=num_steps, rho=0.75, momentum=0.75))(start)
    trace = jax.tree.map(np.asarray, trace)
    start = np.asarray(start)
  assert trace.step_sizes.dtype == np.float64
  fired, compared = set(), 0
  for b in range(len(labels)):
    evaluate_np = functools.partial(np_toy_evaluate, w1, b1, w2, b2, label=labels[b])
    etas, best, best_loss, worst, worst_wrong, fired_b, ambiguous = np_apgd(
        evaluate_np, images[b].reshape(2), start[b].reshape(2), eps=eps, num_steps=num_steps,
        norm=norm)
    if ambiguous:
      continue
    fired |= fired_b
    compared += 1
    np.testing.assert_allclose(trace.step_sizes[:, b], etas, rtol=1e-12, err_msg=f"example {b}")
    np.testing.assert_allclose(trace.best_point[b].reshape(2), best, atol=1e-9)
    np.testing.assert_allclose(trace.best_loss[b], best_loss, rtol=1e-9)
    np.testing.assert_allclose(trace.worst_case.adversarial[b].reshape(2), worst, atol=1e-9)
    assert bool(trace.worst_case.wrong[b]) == worst_wrong
  assert compared >= 0.5 * len(labels)
  assert fired == {"oscillating", "stalled"}  # both halving conditions were exercised
  assert (trace.step_sizes[-1] < 2 * eps).all()


def test_apgd_returns_the_worst_case_of_its_runs(toy):
  """apgd is _apgd_run from the uniform start; restarts keep the per-example worst case."""
  w1, b1, w2, b2, images, labels = toy
  eps, num_steps = 0.1, 6
  w1, b1, w2, b2 = (jnp.asarray(p, jnp.float32) for p in (w1, b1, w2, b2))
  logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], 2) @ w1 + b1) @ w2 + b2
  images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels)
  keys = jax.random.split(jax.random.PRNGKey(3), len(labels))
  evaluate = lib_objectives.loss_and_gradient(logits_fn, lib_objectives.ce, labels)

  @jax.jit
  def one_run(run_keys):
    return apgd_lib._apgd_run(
        evaluate, parts.uniform_init(run_keys, images, eps), parts.linf_projection(images, eps),
        parts.sign_gradient_step, eps=eps, num_steps=num_steps, rho=0.75,
        momentum=0.75).worst_case

  attack = jax.jit(lambda keys, restarts: attacks.apgd(
      logits_fn, images, labels, keys, eps=eps, num_steps=num_steps, restarts=restarts),
      static_argnums=1)
  first = one_run(keys)
  np.testing.assert_allclose(attack(keys, 1), first.adversarial, atol=1e-6)
  expected = parts.keep_worst_case(first, one_run(parts.per_example_keys(keys, 1)))
  np.testing.assert_allclose(attack(keys, 2), expected.adversarial, atol=1e-6)


@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_in_parts_takes_exactly_the_steps_of_apgd_in_one_call(monkeypatch, targeted):
  """On CPU the evaluator runs APGD's unrolled iterations as separately compiled parts (compiling
  them whole grows faster than their number); each part continues the schedule where the one
  before stopped, so the parts give the very points of one call."""
  monkeypatch.setattr(parts, "PART_STEPS", 4)
  logits_fn, images, keys = steep_mlp_problem()
  labels = jnp.argmax(logits_fn(images), -1)
  eps, num_steps = 0.2, 11
  schedule_parts = apgd_lib.schedule_parts(num_steps)
  assert [len(index) for index, _, _ in schedule_parts] == [4, 4, 3]
  program = apgd_lib.SteppedApgd(eps, num_steps, "targeted_dlr" if targeted else "ce",
                                 num_target_classes=3 if targeted else None)
  carry = jax.jit(lambda x, y, k: program.start(logits_fn, x, y, k))(images, labels, keys)
  advance = jax.jit(lambda x, y, c, s: program.advance(logits_fn, x, y, c, s, unroll=True))
  for schedule in schedule_parts:
    carry = advance(images, labels, carry, schedule)
  in_parts = jax.jit(lambda x, c: program.worst_case(x, c).adversarial)(images, carry)

  attack = functools.partial(apgd_lib.apgd_targeted, num_target_classes=3) if targeted else (
      apgd_lib.apgd)
  whole = jax.jit(lambda x, y, k: attack(logits_fn, x, y, k, eps=eps, num_steps=num_steps,
                                         unroll=True))(images, labels, keys)
  np.testing.assert_array_equal(in_parts, whole)
  assert np.any(np.asarray(jnp.argmax(logits_fn(whole), -1) != labels))  # it broke something
