"""The evaluator: its command line end to end on a short run, and its bookkeeping."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import parallel
from act_jax.attacks import parts as attack_parts
from act_jax.attacks import specs
from act_jax.data import catalog, pipeline
from act_jax.evaluate import cli, sanity
from act_jax.evaluate.evaluator import Evaluator, attack_key

from helpers import HAS_REAL_FASHION_MNIST, REAL_FASHION_MNIST_DIR, REPO, make_tiny_config

CLI_ATTACKS = "clean,fgsm,pgd5,pgd5-l2,pgd5-ll,cw5,apgd-ce,apgd-t,autoattack,transfer"


@pytest.fixture(scope="module")
def trained_workdir(fake_fashion_mnist_dir, tmp_path_factory):
  """A short training run: 40 steps on the real Fashion-MNIST (the fake files without it)."""
  from act_jax import train
  root = tmp_path_factory.mktemp("evaluate")
  config = make_tiny_config(REAL_FASHION_MNIST_DIR if HAS_REAL_FASHION_MNIST
                            else fake_fashion_mnist_dir,
                            str(root / "tfds"))
  config.train.max_steps = 40
  config.train.batch_size = 32
  config.eval.num_examples = 64
  train.train_and_evaluate(config, str(root / "run"))
  return str(root / "run")


@pytest.mark.slow
def test_cli_end_to_end(trained_workdir, tmp_path):
  output = tmp_path / "new_directory" / "robustness.json"
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.evaluate", f"--workdir={trained_workdir}",
       f"--output={output}",
       f"--attacks={CLI_ATTACKS}", "--eps=0.1", "--eps_l2=1.0", "--num_examples=24",
       "--batch_size=8", "--eps_sweep=0,0.05,0.1,0.2", "--apgd_steps=10", "--fab_steps=5",
       "--square_queries=100"],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
      timeout=1200)
  assert result.returncode == 0, result.stderr[-5000:]
  with open(output) as f:
    results = json.load(f)
  assert results["num_examples"] == 24 and results["apgd_steps"] == 10
  assert "10 steps" in results["attacks"]["apgd-ce"]
  names = CLI_ATTACKS.split(",")
  assert set(results["attacks"]) == set(names)
  for model in ("natural", "robust"):
    accuracy = results["accuracy"][model]
    assert set(accuracy) == set(names) | {"worst_case"}
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert accuracy["worst_case"] == min(accuracy.values())  # an AND is below every member
    assert accuracy["autoattack"] <= min(accuracy["apgd-ce"], accuracy["apgd-t"])
    stages = results["cascade_stages"][model]["autoattack"]
    assert [s["attack"] for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert stages[-1]["accuracy"] == accuracy["autoattack"]
  sweep = results["eps_sweep"]
  assert sweep["eps"] == [0.0, 0.05, 0.1, 0.2] and sweep["attack"] == "pgd20"
  checks = {(c["check"], c["model"]): c for c in results["sanity_checks"]}
  for model in ("natural", "robust"):
    assert checks[("accuracy at eps=0 equals clean accuracy", model)]["passed"]
    assert sweep["accuracy"][model][0] == results["accuracy"][model]["clean"]
  assert results["all_sanity_checks_passed"] == all(c["passed"] for c in checks.values())
  with open(results["plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| natural |" in result.stdout and "worst case" in result.stdout
  assert "| natural | AutoAttack | Square |" in result.stdout


def test_cli_rejects_a_bad_attack_name_naming_the_valid_ones(trained_workdir):
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.evaluate", f"--workdir={trained_workdir}",
       "--attacks=clean,pgd"], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
  assert result.returncode == 2
  assert "--attacks=clean,pgd: unknown attack 'pgd'; valid: clean, fgsm" in result.stderr


@pytest.mark.parametrize("field,value,message", [
    ("attacks", "clean,pgd0", "unknown attack 'pgd0'"),
    ("sweep_attack", "autoattack", "single white-box attack"),
    ("eps", -0.1, "--eps=-0.1: must be >= 0"),
    ("restarts", 0, "--restarts=0: must be >= 1"),
    ("apgd_steps", 0, "--apgd_steps=0: must be >= 1"),
])
def test_bad_requests_name_the_flag(field, value, message):
  request = cli.EvaluationRequest(workdir="unused", **{field: value})
  with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
    cli._check(request)


@pytest.mark.parametrize("models,attacks,message", [
    (("robust", "teacher"), None, "this act run has natural, robust"),
    (("robust",), "clean,transfer", "transfer needs two models"),
])
def test_requests_are_checked_against_the_run(trained_workdir, models, attacks, message):
  from act_jax import api
  request = cli.EvaluationRequest(workdir=trained_workdir, models=models, attacks=attacks)
  parsed, _ = cli._check(request)
  with pytest.raises(cli.UsageError, match=message):
    cli._check_against_run(request, api.load_run(trained_workdir), parsed)


def test_the_default_attacks_skip_transfer_for_one_model(trained_workdir):
  from act_jax import api
  request = cli.EvaluationRequest(workdir=trained_workdir, models=("robust",))
  models, attacks = cli._check_against_run(request, api.load_run(trained_workdir), None)
  assert models == ("robust",) and "transfer" not in [a.name for a in attacks]


def test_a_failed_sanity_check_is_warned_about_once(trained_workdir, tmp_path, capsys,
                                                    recwarn):
  """One line on stderr, not that line and a Python warning of the same failure as well."""
  request = cli.EvaluationRequest(
      workdir=trained_workdir, attacks="clean", models=("robust",), num_examples=8,
      batch_size=8, eps_sweep=[], large_eps=0.0, large_eps_max_accuracy=-1.0,
      output=str(tmp_path / "robustness.json"), show_progress=False)
  results = cli.evaluate_run(request)
  assert not results["all_sanity_checks_passed"]
  stderr = capsys.readouterr().err
  assert stderr.count("sanity check failed") == 1, stderr
  assert "warning: sanity check failed for robust: a large-eps attack" in stderr
  assert [str(w.message) for w in recwarn if "sanity" in str(w.message)] == []


NUM_CLASSES = 4


def linear_apply(variables, images):
  return images.reshape(images.shape[0], -1) @ variables["w"] + variables["b"]


@pytest.fixture(scope="module")
def linear_problem():
  data = np.random.default_rng(0)
  images = data.uniform(0.1, 0.9, size=(16, 4, 4, 1)).astype(np.float32)
  labels = data.integers(0, NUM_CLASSES, 16).astype(np.int32)
  models = {name: {"w": jnp.asarray(data.normal(size=(16, NUM_CLASSES)), jnp.float32),
                   "b": jnp.zeros(NUM_CLASSES, jnp.float32)} for name in ("first", "second")}
  # Make the models mostly right on clean inputs, so that attacks have something to break.
  for variables in models.values():
    variables["b"] = -jnp.asarray(images.reshape(16, -1) @ np.asarray(variables["w"])).mean(0)
  return images, labels, models


def eval_data(images, labels, batch_size=16, supports_subsets=True):
  data = pipeline.in_memory_eval_data(catalog.Split(images, labels),
                                      per_process_batch_size=batch_size)
  return dataclasses.replace(data, supports_subsets=supports_subsets)


def suite(names, linear_problem, eps=0.1, data=None):
  images, labels, models = linear_problem
  mesh = parallel.make_mesh(jax.devices()[:1])
  settings = specs.AttackSettings(eps=eps, eps_l2=0.5, pgd_travel=2.0, apgd_steps=5,
                                  fab_steps=5, square_queries=50)
  evaluator = Evaluator(linear_apply, mesh, specs.parse_names(",".join(names)), settings)
  result = evaluator(parallel.replicate(models, mesh), data or eval_data(images, labels),
                     jax.random.PRNGKey(3))
  return result, settings


def test_worst_case_is_the_per_example_and_over_attacks(linear_problem):
  images, labels, models = linear_problem
  names = ("clean", "fgsm", "pgd3")
  result, settings = suite(names, linear_problem)
  for name in models:
    logits_fn = functools.partial(linear_apply, models[name])
    rng = jax.random.PRNGKey(3)  # the attack's name, then the example's index, as the evaluator
    correct = np.array(jnp.argmax(logits_fn(images), -1) == labels)
    for attack in ("fgsm", "pgd3"):
      keys = jax.vmap(jax.random.fold_in, (None, 0))(attack_key(rng, attack),
                                                     jnp.arange(len(labels)))
      adversarial = specs.parse(attack).build(settings)(logits_fn, images, labels, keys)
      survived = np.asarray(jnp.argmax(logits_fn(adversarial), -1) == labels)
      assert result.accuracy[name][attack] == pytest.approx(survived.mean())
      correct &= survived
    assert result.accuracy[name]["worst_case"] == pytest.approx(correct.mean())
    assert result.accuracy[name]["worst_case"] <= min(result.accuracy[name][a] for a in names)


def test_transfer_crafts_on_the_other_model_only(linear_problem):
  images, labels, models = linear_problem
  result, settings = suite(("transfer",), linear_problem)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(attack_key(jax.random.PRNGKey(3), "transfer"),
                                                 jnp.arange(len(labels)))
  for target, source in (("first", "second"), ("second", "first")):
    crafted = specs.parse("pgd20").build(settings)(
        functools.partial(linear_apply, models[source]), images, labels, keys)
    clean = jnp.argmax(linear_apply(models[target], images), -1) == labels
    survived = jnp.argmax(linear_apply(models[target], crafted), -1) == labels
    assert result.accuracy[target]["transfer"] == pytest.approx(float(jnp.mean(clean & survived)))
  white_box, _ = suite(("pgd20",), linear_problem)
  # A white-box attack on the target itself is stronger than the transferred one.
  for name in models:
    assert white_box.accuracy[name]["pgd20"] <= result.accuracy[name]["transfer"]


def test_transfer_counts_only_examples_correct_on_clean_inputs(linear_problem):
  """Crafted on a model whose logits are the target's negated, the transferred perturbation
  moves the target's misclassified examples towards their labels: measured alone, "robust"
  accuracy would exceed clean accuracy and raise a false sanity alarm."""
  images, labels, models = linear_problem
  mirrored = {"first": models["first"],
              "second": jax.tree.map(lambda x: -x, models["first"])}
  result, settings = suite(("transfer",), (images, labels, mirrored), eps=0.3)
  crafted = specs.parse("pgd20").build(settings)(
      functools.partial(linear_apply, mirrored["first"]), images, labels,
      jax.vmap(jax.random.fold_in, (None, 0))(attack_key(jax.random.PRNGKey(3), "transfer"),
                                              jnp.arange(len(labels))))
  alone = float(jnp.mean(jnp.argmax(linear_apply(mirrored["second"], crafted), -1) == labels))
  accuracy = result.accuracy["second"]
  assert alone > accuracy["clean"] >= accuracy["transfer"]
  checks = sanity.sanity_checks(result.accuracy, None, None)
  assert all(check.passed for check in checks), checks
  # A white-box attack above clean accuracy is still a failed check.
  broken = {"second": {**accuracy, "pgd20": accuracy["clean"] + 0.1}}
  assert not sanity.sanity_checks(broken, None, None)[0].passed


@pytest.mark.parametrize("cascade", ["autoattack", "apgd-ce+apgd-t"])
def test_a_cascade_gives_the_per_example_and_of_running_everything(linear_problem, cascade):
  """A cascade's members attack only the still-robust examples, in smaller batches, and give
  exactly the AND that running every member on every example gives (streamed data); each
  stage's accuracy is the AND of clean and the members up to it."""
  images, labels, _ = linear_problem
  members = specs.parse(cascade).members
  names = ("pgd3", cascade)
  cascaded, _ = suite(names, linear_problem, eps=0.2, data=eval_data(images, labels, 4))
  everything, _ = suite(names, linear_problem, eps=0.2,
                        data=eval_data(images, labels, 4, supports_subsets=False))
  assert cascaded.accuracy == everything.accuracy
  assert cascaded.stages == everything.stages
  alone, _ = suite(("clean", *members), linear_problem, eps=0.2)
  for model in cascaded.accuracy:
    assert everything.attacked[model][members[-1]] == len(labels)
    assert cascaded.attacked[model][members[0]] == round(
        cascaded.accuracy[model]["clean"] * len(labels))
    assert cascaded.attacked[model][members[1]] < cascaded.attacked[model][members[0]]
    stages = cascaded.stages[model][cascade]
    assert [stage["attack"] for stage in stages] == list(members)
    assert stages[-1]["accuracy"] == cascaded.accuracy[model][cascade]
    accuracies = [stage["accuracy"] for stage in stages]
    assert accuracies == sorted(accuracies, reverse=True)
    # Each member's keys do not depend on its position: alone, it breaks the same examples.
    assert stages[0]["accuracy"] == pytest.approx(alone.accuracy[model][members[0]])


def test_sanity_checks_flag_each_failure():
  good = {"m": {"clean": 0.9, "pgd20": 0.5}}
  sweep = {"attack": "pgd20", "eps": [0.0, 0.1, 0.2], "accuracy": {"m": [0.9, 0.5, 0.1]}}
  large = {"attack": "pgd20", "eps": 1.0, "max_accuracy": 0.05, "accuracy": {"m": 0.0}}
  assert all(check.passed for check in sanity.sanity_checks(good, sweep, large))
  failures = sanity.sanity_checks(
      {"m": {"clean": 0.5, "pgd20": 0.6}},
      {"attack": "pgd20", "eps": [0.0, 0.1, 0.2], "accuracy": {"m": [0.45, 0.3, 0.4]}},
      {**large, "accuracy": {"m": 0.4}})
  assert [check.passed for check in failures] == [False, False, False, False]
  assert "gradient masking" in failures[3].detail


def mlp_apply(variables, images):
  return jnp.tanh(images.reshape(images.shape[0], -1) @ variables["w1"]) @ variables["w2"]


def test_unrolled_apgd_runs_in_parts_with_the_result_of_one_call(monkeypatch):
  """Unrolled (as on CPU) and longer than a part, APGD, APGD-T and FAB-T run as separately
  compiled parts; the evaluator counts the examples the attack in one call leaves correct. A
  steep network with a small eps, so that the result depends on every part."""
  monkeypatch.setattr(attack_parts, "PART_STEPS", 3)
  data = np.random.default_rng(2)
  variables = {"w1": jnp.asarray(data.normal(size=(16, 32)) * 8, jnp.float32),
               "w2": jnp.asarray(data.normal(size=(32, 5)), jnp.float32)}
  images = data.uniform(0.1, 0.9, size=(48, 4, 4, 1)).astype(np.float32)
  labels = np.asarray(jnp.argmax(mlp_apply(variables, images), -1), np.int32)
  mesh = parallel.make_mesh(jax.devices()[:1])
  settings = specs.AttackSettings(eps=0.08, apgd_steps=9, fab_steps=9, unroll=True)
  names = ("apgd-ce", "apgd-t", "fab-t")
  for name in names:
    assert specs.parse(name).stepped(settings) is not None
  assert specs.parse("apgd-ce").stepped(dataclasses.replace(settings, unroll=False)) is None
  evaluator = Evaluator(mlp_apply, mesh, specs.parse_names(",".join(names)), settings)
  result = evaluator(parallel.replicate({"model": variables}, mesh),
                     eval_data(images, labels, 16), jax.random.PRNGKey(3))
  logits_fn = functools.partial(mlp_apply, variables)
  for name in names:
    keys = jax.vmap(jax.random.fold_in, (None, 0))(attack_key(jax.random.PRNGKey(3), name),
                                                   jnp.arange(len(labels)))
    adversarial = specs.parse(name).build(settings)(logits_fn, images, labels, keys)
    survived = np.asarray(jnp.argmax(logits_fn(adversarial), -1) == labels)
    assert result.accuracy["model"][name] == pytest.approx(survived.mean())
    assert 0.0 < result.accuracy["model"][name] < 1.0
