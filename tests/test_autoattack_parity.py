"""The standard AutoAttack, act-jax's against torchattacks 3.5.1, on identical weights.

The model is a nearest-class-mean classifier on the real Fashion-MNIST (a linear model whose
weights are the class means of the training images: no training, the same numbers in both
frameworks), which is correct on about 70% of the test images and robust on a fraction of
them at this eps, so that every stage of the cascade has examples to break and to leave.
Iterations and queries are cut so that the test runs in a minute; both sides use the same.

Tolerance: the randomised attacks (APGD's starts, Square's windows) draw from different random
streams in the two frameworks, so their results may differ on borderline examples; two
unbiased attacks of equal strength on the same N examples differ by sampling noise. Accuracies
must agree within 3 binomial standard errors of the difference of two independent estimates
(conservative: the two runs share their examples, which correlates them), and the two
cascades must agree on at least 90% of the examples, one by one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import parallel
from act_jax.attacks import specs
from act_jax.data import datasets, fashion_mnist, pipeline
from act_jax.evaluate.evaluator import Evaluator, attack_key

from helpers import HAS_REAL_FASHION_MNIST, NEEDS_REAL_FASHION_MNIST, REAL_FASHION_MNIST_DIR

torch = pytest.importorskip("torch")
pytest.importorskip("torchattacks")
# About 15 minutes on 2 busy CPU cores (torchattacks' Python loops dominate): the full tier.
pytestmark = [pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST),
              pytest.mark.slow, pytest.mark.full]

from benchmarks import torch_autoattack  # noqa: E402  (needs torchattacks)

NUM_EXAMPLES = 200
EPS = 0.03
STEPS = dict(apgd_steps=25, fab_steps=25, square_queries=300)
MIN_AGREEMENT = 0.9


def linear_apply(variables, images):
  return images.reshape(images.shape[0], -1) @ variables["w"] + variables["b"]


@pytest.fixture(scope="module")
def problem():
  """Nearest class mean: logit_c = <x, mu_c> - |mu_c|^2 / 2, in JAX and in torch."""
  train_images, train_labels = fashion_mnist.read_split(REAL_FASHION_MNIST_DIR, "train")
  test_images, test_labels = fashion_mnist.read_split(REAL_FASHION_MNIST_DIR, "test")
  flat = train_images.reshape(len(train_images), -1).astype(np.float32) / 255.0
  means = np.stack([flat[train_labels == c].mean(0) for c in range(10)]).astype(np.float32)
  w, b = means.T.copy(), (-0.5 * (means ** 2).sum(1)).astype(np.float32)
  images = test_images[:NUM_EXAMPLES].astype(np.float32)[..., None] / 255.0
  labels = test_labels[:NUM_EXAMPLES].astype(np.int32)
  torch_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
  with torch.no_grad():
    torch_model[1].weight.copy_(torch.from_numpy(w.T.copy()))
    torch_model[1].bias.copy_(torch.from_numpy(b))
  return {"variables": {"w": jnp.asarray(w), "b": jnp.asarray(b)}, "images": images,
          "labels": labels, "torch_model": torch_model.eval()}


def jax_cascade(problem) -> tuple[dict, dict]:
  mesh = parallel.make_mesh(jax.devices()[:1])
  settings = specs.AttackSettings(eps=EPS, **STEPS)
  names = "apgd-ce,apgd-t,fab-t,square,autoattack"
  evaluator = Evaluator(linear_apply, mesh, specs.parse_names(names), settings)
  data = pipeline.in_memory_eval_data(datasets.Split(problem["images"], problem["labels"]),
                                      per_process_batch_size=100)
  result = evaluator({"m": parallel.replicate(problem["variables"], mesh)}, data,
                     jax.random.PRNGKey(0))
  return result.accuracy["m"], result.stages["m"]["autoattack"]


def torch_attacks(problem) -> tuple[dict, list, np.ndarray]:
  """Each attack on every example, then the cascade by hand (as torchattacks.MultiAttack does,
  recording the accuracy after each stage)."""
  model = problem["torch_model"]
  x = torch.from_numpy(problem["images"].transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(problem["labels"].astype(np.int64))
  attacks = torch_autoattack.standard_attacks(model, eps=EPS, num_classes=10, **STEPS)

  def correct(images, labels):
    with torch.no_grad():
      return (model(images).argmax(1) == labels).numpy()

  clean = correct(x, y)
  accuracy = {"clean": clean.mean()}
  for name, attack in attacks.items():
    accuracy[name] = (clean & correct(attack(x, y), y)).mean()
  alive, stages = clean.copy(), []
  for name in torch_autoattack.STAGES:
    survivors = np.flatnonzero(alive)
    if len(survivors):
      index = torch.from_numpy(survivors)
      alive[survivors] = correct(attacks[name](x[index], y[index]), y[index])
    stages.append({"attack": name, "accuracy": alive.mean()})
  return accuracy, stages, alive


def tolerance(p: float, q: float) -> float:
  return 3 * math.sqrt((p * (1 - p) + q * (1 - q)) / NUM_EXAMPLES) + 1e-9


@pytest.fixture(scope="module")
def both(problem):
  return jax_cascade(problem), torch_attacks(problem)


@pytest.mark.parametrize("attack", torch_autoattack.STAGES)
def test_each_attack_agrees_with_torchattacks(both, attack):
  (jax_accuracy, _), (torch_accuracy, _, _) = both
  assert jax_accuracy["clean"] == pytest.approx(torch_accuracy["clean"])
  assert jax_accuracy["clean"] > 0.2 and jax_accuracy[attack] < jax_accuracy["clean"]
  mine, theirs = jax_accuracy[attack], torch_accuracy[attack]
  assert abs(mine - theirs) <= tolerance(mine, theirs), (attack, mine, theirs)


def test_the_cascade_agrees_with_torchattacks_stage_by_stage(both, problem):
  (jax_accuracy, jax_stages), (_, torch_stages, torch_alive) = both
  assert [s["attack"] for s in jax_stages] == [s["attack"] for s in torch_stages]
  for mine, theirs in zip(jax_stages, torch_stages, strict=True):
    assert abs(mine["accuracy"] - theirs["accuracy"]) <= tolerance(
        mine["accuracy"], theirs["accuracy"]), (mine, theirs)
  # Some examples survive (on this linear model APGD-CE already finds what the others find).
  assert 0 < jax_accuracy["autoattack"] <= jax_accuracy["apgd-ce"] < jax_accuracy["clean"]
  # Per example: JAX's survivors against torch's, on the same examples.
  jax_alive = _per_example_autoattack(problem)
  assert jax_alive.mean() == pytest.approx(jax_accuracy["autoattack"])
  assert np.mean(jax_alive == torch_alive) >= MIN_AGREEMENT


def _per_example_autoattack(problem) -> np.ndarray:
  """Which examples survive the JAX attacks: each stage on every example, keyed as the
  evaluator keys it; their AND is the cascade's (tests/test_evaluate.py checks that)."""
  settings = specs.AttackSettings(eps=EPS, **STEPS)
  logits_fn = lambda images: linear_apply(problem["variables"], images)
  images, labels = jnp.asarray(problem["images"]), jnp.asarray(problem["labels"])
  alive = np.array(jnp.argmax(logits_fn(images), -1) == labels)  # writable, for &= below
  for name in torch_autoattack.STAGES:
    keys = jax.vmap(jax.random.fold_in, (None, 0))(attack_key(jax.random.PRNGKey(0), name),
                                                   jnp.arange(len(labels)))
    adversarial = specs.parse(name).build(settings)(logits_fn, images, labels, keys)
    alive &= np.asarray(jnp.argmax(logits_fn(adversarial), -1) == labels)
  return alive
