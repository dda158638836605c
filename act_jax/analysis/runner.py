"""Every measure of `act_jax.analysis` on the models of one run, written to `analysis.json`.

Each measure runs on fixed subsets (the first `num_examples` of the training split and of the
test split), with each model in eval mode (running BatchNorm statistics) and keys derived from
one seed and the measure's name, so a rerun gives the same numbers. Adversarial inputs are the
run's own evaluation PGD (`config.eval`: PGD-20 at eps 0.1 on Fashion-MNIST), crafted once per
model with per-example keys, and reused by every measure that needs them.
"""

import dataclasses
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from act_jax import api, parallel, reporting
from act_jax.analysis import complexity, curvature, objective, report, representations, weight_noise
from act_jax.attacks import specs as attack_specs
from act_jax.data import datasets, in_memory
from act_jax.errors import UserError
from act_jax.evaluate import evaluator as evaluator_lib

MEASURES = ("entropy", "generalisation", "hessian", "hessian_trace", "weight_noise",
            "landscape", "pac_bayes", "fisher_rao", "effective_rank", "mutual_information",
            "alignment")
DEFAULT_MEASURES = tuple(m for m in MEASURES if m != "hessian_trace")
NOISE_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2)
NOISE_DRAWS = 5
LANDSCAPE_1D = tuple(np.round(np.linspace(-1.0, 1.0, 21), 6))
LANDSCAPE_2D = tuple(np.round(np.linspace(-1.0, 1.0, 11), 6))
LANCZOS_MATVECS = 20
HUTCHINSON_SAMPLES = 32
ANALYSIS_FILE = "analysis.json"


class AnalysisError(UserError, ValueError):
  """A request the analysis cannot run; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class AnalysisRequest:
  workdir: str
  models: Sequence[str] | None = None
  measures: Sequence[str] = DEFAULT_MEASURES
  num_examples: int = 1000
  seed: int = 0
  output: str | None = None  # a directory; default: the workdir


def _key(seed: int, *names: str) -> jax.Array:
  """A key from the seed and names (a measure, a model): fixed however the measures are run."""
  key = jax.random.PRNGKey(seed)
  for name in names:
    key = jax.random.fold_in(key, zlib.crc32(name.encode()))
  return key


def _subset(run: api.TrainedRun, split: str, count: int, mesh: Any) -> objective.Examples:
  whole = datasets.in_memory_split(run.config.dataset, split)
  images = whole.images[:count]
  images = in_memory.unit_interval_images(images)
  return objective.place(images, whole.labels[:count].astype(np.int32), mesh)


@dataclasses.dataclass(frozen=True)
class ModelUnderTest:
  """One model of the run with what the measures need: its logits as a function of its params
  (BatchNorm statistics fixed), and the fixed examples, clean and adversarial."""
  name: str
  params: Any
  batch_stats: Any
  apply: Callable[..., Any]
  clean: dict[str, objective.Examples]
  adversarial: dict[str, objective.Examples]

  def logits(self, params: Any, images: jax.Array) -> jax.Array:
    return self.apply({"params": params, "batch_stats": self.batch_stats}, images)

  def mean(self, per_example: objective.PerExample, examples: objective.Examples,
           mesh: Any) -> Callable[[Any], jax.Array]:
    return objective.mean_over(per_example, examples, mesh)

  def cross_entropy(self, examples: objective.Examples, mesh: Any) -> Callable[[Any], jax.Array]:
    return self.mean(lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
        self.logits(p, x).astype(jnp.float32), y), examples, mesh)

  def error(self, examples: objective.Examples, mesh: Any) -> Callable[[Any], jax.Array]:
    return self.mean(lambda p, x, y: (jnp.argmax(self.logits(p, x), -1) != y).astype(
        jnp.float32), examples, mesh)


def _craft(run: api.TrainedRun, apply: Callable[..., Any], variables: Any,
           examples: objective.Examples, mesh: Any, key: jax.Array) -> objective.Examples:
  """The run's evaluation PGD against this model, one key per example index."""
  settings = evaluator_lib.training_settings(run.config.eval,
                                             unroll=parallel.unrolls_attack_loops(mesh))
  attack = attack_specs.parse(f"pgd{run.config.eval.num_steps}").build(settings)
  logits_fn = lambda images: apply(variables, images)
  adversarial = objective.per_example(
      lambda images, labels, indices: attack(logits_fn, images, labels,
                                             parallel.keys_by_index(key, indices)),
      examples, mesh)
  return examples.replace_images(adversarial)


def _softmax_statistics(model: ModelUnderTest, examples: objective.Examples,
                        mesh: Any) -> dict[str, float]:
  """Mean entropy (nats) of the softmax and accuracy on `examples`."""
  def per_example(images, labels, indices):
    del indices
    logits = model.logits(model.params, images)
    log_p = jax.nn.log_softmax(logits)
    return {"entropy": -jnp.sum(jnp.exp(log_p) * log_p, -1),
            "correct": (jnp.argmax(logits, -1) == labels).astype(jnp.float32)}
  values = objective.to_host(objective.per_example(per_example, examples, mesh), examples)
  return {"entropy": float(values["entropy"].mean()), "accuracy": float(values["correct"].mean())}


def _features(model: ModelUnderTest, examples: objective.Examples, mesh: Any
              ) -> dict[str, np.ndarray]:
  variables = {"params": model.params, "batch_stats": model.batch_stats}
  values = objective.per_example(
      lambda images, labels, indices: representations.representations(
          model.apply, variables, images), examples, mesh)
  return objective.to_host(values, examples)


def _measure_model(model: ModelUnderTest, measures: Sequence[str], mesh: Any, seed: int
                   ) -> tuple[dict[str, Any], dict[str, float]]:
  """The per-model measures; (results, seconds per measure)."""
  results, seconds = {}, {}
  train, test = model.clean["train"], model.clean["test"]
  cached: dict[str, dict[str, np.ndarray]] = {}

  def test_features() -> dict[str, np.ndarray]:
    """The test subset's features, computed once for every measure that reads them."""
    if "test" not in cached:
      cached["test"] = _features(model, test, mesh)
    return cached["test"]

  for measure in measures:
    began = time.perf_counter()
    key = _key(seed, measure, model.name)
    if measure == "entropy":
      results[measure] = {kind: _softmax_statistics(model, examples["test"], mesh)["entropy"]
                          for kind, examples in (("clean", model.clean),
                                                 ("pgd", model.adversarial))}
    elif measure == "generalisation":
      accuracy = {f"{kind}_{split}": _softmax_statistics(model, examples[split], mesh)[
          "accuracy"] for kind, examples in (("clean", model.clean), ("pgd", model.adversarial))
                  for split in ("train", "test")}
      results[measure] = {**accuracy,
                          "clean_gap": accuracy["clean_train"] - accuracy["clean_test"],
                          "pgd_gap": accuracy["pgd_train"] - accuracy["pgd_test"]}
    elif measure == "hessian":
      results[measure] = {
          kind: curvature.top_eigenvalue(model.cross_entropy(examples["train"], mesh),
                                         model.params, key, num_matvecs=LANCZOS_MATVECS)
          for kind, examples in (("clean", model.clean), ("pgd", model.adversarial))}
    elif measure == "hessian_trace":
      estimate, error = curvature.trace(model.cross_entropy(train, mesh), model.params, key,
                                        num_samples=HUTCHINSON_SAMPLES)
      results[measure] = {"clean": estimate, "clean_standard_error": error}
    elif measure == "weight_noise":
      results[measure] = weight_noise.noise_rise(
          model.cross_entropy(train, mesh), model.error(train, mesh), model.params, key,
          scales=NOISE_SCALES, draws=NOISE_DRAWS)
    elif measure == "landscape":
      loss = model.cross_entropy(train, mesh)
      first, second = jax.random.split(key)
      results[measure] = {
          "alphas_1d": list(LANDSCAPE_1D),
          "loss_1d": weight_noise.landscape_1d(loss, model.params, first, alphas=LANDSCAPE_1D),
          "alphas_2d": list(LANDSCAPE_2D),
          "loss_2d": weight_noise.landscape_2d(loss, model.params, second, alphas=LANDSCAPE_2D)}
    elif measure == "pac_bayes":
      results[measure] = {"sigma": weight_noise.pac_bayes_sigma(
          model.error(train, mesh), model.params, key, draws=NOISE_DRAWS)}
    elif measure == "fisher_rao":
      values = objective.to_host(objective.per_example(
          _without_labels(complexity.fisher_rao_per_example(model.logits)),
          train, mesh, model.params, jax.tree.map(jnp.copy, model.params)), train)
      results[measure] = {"norm": complexity.fisher_rao_norm(values),
                          "squared": float(values.mean())}
    elif measure == "effective_rank":
      features = test_features()
      results[measure] = {"penultimate": representations.effective_rank(
          features["penultimate"])}
    elif measure == "mutual_information":
      features = test_features()
      results[measure] = {layer: representations.binned_mutual_information(values)
                          for layer, values in features.items()}
      results[measure]["bins"] = representations.MI_BINS
    else:
      continue
    seconds[measure] = time.perf_counter() - began
    _progress(f"{model.name}: {measure} took {seconds[measure]:.1f} s")
  return results, seconds


def _without_labels(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn(*trees, images)` as `objective.per_example` calls it, with labels and indices."""
  return lambda *arguments: fn(*arguments[:-2])


def _progress(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _alignment(natural: ModelUnderTest, robust: ModelUnderTest, mesh: Any) -> dict[str, Any]:
  """Per-layer linear CKA, prediction agreement and mean KL(natural || robust), on the test
  subset clean and under the robust model's PGD."""
  result = {}
  for kind, examples in (("clean", robust.clean["test"]), ("pgd", robust.adversarial["test"])):
    first, second = _features(natural, examples, mesh), _features(robust, examples, mesh)

    def per_example(images, labels, indices):
      del labels, indices
      log_p = jax.nn.log_softmax(natural.logits(natural.params, images))
      log_q = jax.nn.log_softmax(robust.logits(robust.params, images))
      return {"agree": (jnp.argmax(log_p, -1) == jnp.argmax(log_q, -1)).astype(jnp.float32),
              "kl": jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1)}
    values = objective.to_host(objective.per_example(per_example, examples, mesh), examples)
    result[kind] = {"cka": {layer: representations.linear_cka(first[layer], second[layer])
                            for layer in first},
                    "agreement": float(values["agree"].mean()), "kl": float(values["kl"].mean())}
  return result


def analyse_run(request: AnalysisRequest) -> dict[str, Any]:
  """Runs the requested measures on the run's models; writes and returns `analysis.json`."""
  unknown = [m for m in request.measures if m not in MEASURES]
  if unknown or not request.measures:
    raise AnalysisError(f"--measures={','.join(request.measures)}: allowed: "
                        f"{', '.join(MEASURES)}")
  if request.num_examples < 1:
    raise AnalysisError(f"--num_examples={request.num_examples}: must be >= 1")
  mesh = parallel.make_mesh()
  run = api.load_run(request.workdir, devices=list(mesh.devices.flat))
  names = tuple(request.models or run.method.model_names)
  if not set(names) <= set(run.method.model_names):
    raise AnalysisError(f"--models={','.join(names)}: this {run.method.name} run has "
                        f"{', '.join(run.method.model_names)}")
  began = time.perf_counter()
  clean = {split: _subset(run, split, request.num_examples, mesh) for split in ("train", "test")}
  under_test = {}
  for name in names:
    state = run.models[name]
    apply = run.experiment.eval_apply
    under_test[name] = ModelUnderTest(
        name=name, params=state.params, batch_stats=state.batch_stats, apply=apply,
        clean=clean, adversarial={
            split: _craft(run, apply, state.variables, examples, mesh,
                          _key(request.seed, "pgd", name, split))
            for split, examples in clean.items()})
  results: dict[str, Any] = {"models": {}, "seconds": {}}
  for name, model in under_test.items():
    results["models"][name], results["seconds"][name] = _measure_model(
        model, [m for m in request.measures if m != "alignment"], mesh, request.seed)
  if "alignment" in request.measures and {"natural", "robust"} <= set(under_test):
    aligned = time.perf_counter()
    results["alignment"] = _alignment(under_test["natural"], under_test["robust"], mesh)
    results["seconds"]["alignment"] = time.perf_counter() - aligned
  results["meta"] = {"workdir": str(request.workdir), "method": run.method.name,
                     "checkpoint_step": run.step, "num_examples": request.num_examples,
                     "seed": request.seed, "measures": list(request.measures),
                     "attack": f"pgd{run.config.eval.num_steps}, eps {run.config.eval.eps}",
                     "devices": mesh.size, "wall_seconds": time.perf_counter() - began}
  if jax.process_index() == 0:
    output = epath.Path(request.output or request.workdir)
    output.mkdir(parents=True, exist_ok=True)
    reporting.write_json(output / ANALYSIS_FILE, results)
    report.plot_run(results, output)
  return results
