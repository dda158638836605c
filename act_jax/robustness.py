"""Accuracy of classifiers under a suite of attacks, per example, data-parallel over the mesh.

A classifier is `apply_fn(variables, images) -> logits` (eval mode) with its own variables, so
the suite evaluates the two models of an ACT run and any other JAX classifier alike. The
per-device step runs every attack on its shard inside one compiled function (`jax.shard_map`
inside `jax.jit`, as training does) and returns global counts, so the host only divides.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from act_jax import attack_suite, parallel
from act_jax.train_step import DATA_AXIS, example_rngs

ApplyFn = Callable[[Any, jax.Array], jax.Array]
WORST_CASE = "worst_case"


def _predictions(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
  return jnp.argmax(logits_fn(images), axis=-1)


def transfer_attack(source_logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                    labels: jax.Array, rngs: jax.Array,
                    settings: attack_suite.SuiteSettings) -> jax.Array:
  """Adversarial examples crafted on the source model only (black-box for the target).

  The target model is not an argument: nothing of it can enter the crafting.
  """
  return attack_suite.build_transfer_attack(settings)(source_logits_fn, images, labels, rngs)


def robustness_step(variables: Mapping[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array,
                    *, apply_fn: ApplyFn, names: tuple[str, ...],
                    settings: attack_suite.SuiteSettings) -> dict[str, jax.Array]:
  """Per device: how many real examples each model classifies correctly under each attack.

  Returns global sums (psum over `DATA_AXIS`): "count", and "<model>/<attack>" for every name in
  `names`, "<model>/clean" always, and "<model>/worst_case", the examples that survive every attack in `names` (and are
  correct on clean inputs): the per-example AND, as AutoAttack reports robust accuracy.
  "transfer" for one model is crafted on the next model of `variables` (cyclically).
  """
  images, labels, mask = batch["image"], batch["label"], batch["mask"]
  model_names = tuple(variables)
  logits_fns = {name: functools.partial(apply_fn, variables[name]) for name in model_names}
  members = attack_suite.white_box_members(names)
  counts = {"count": jnp.sum(mask)}
  for model_index, model_name in enumerate(model_names):
    logits_fn = logits_fns[model_name]
    correct = {"clean": _predictions(logits_fn, images) == labels}
    for attack_index, member in enumerate(members):
      rngs = example_rngs(jax.random.fold_in(rng, attack_index), 0, images.shape[0])
      adversarial = attack_suite.build_attack(member, settings)(logits_fn, images, labels, rngs)
      correct[member] = _predictions(logits_fn, adversarial) == labels
    for name, parts in attack_suite.COMPOSITES.items():
      if name in names:
        correct[name] = functools.reduce(jnp.logical_and, [correct[part] for part in parts])
    if "transfer" in names:
      source = model_names[(model_index + 1) % len(model_names)]
      rngs = example_rngs(jax.random.fold_in(rng, len(members)), 0, images.shape[0])
      adversarial = transfer_attack(logits_fns[source], images, labels, rngs, settings)
      correct["transfer"] = _predictions(logits_fn, adversarial) == labels
    correct[WORST_CASE] = functools.reduce(jnp.logical_and,
                                           [correct["clean"]] + [correct[n] for n in names])
    for name in dict.fromkeys(("clean",) + names + (WORST_CASE,)):
      counts[f"{model_name}/{name}"] = jnp.sum(correct[name] * mask)
  return jax.lax.psum(counts, DATA_AXIS)


@functools.lru_cache(maxsize=32)
def _compiled_step(apply_fn: ApplyFn, names: tuple[str, ...],
                   settings: attack_suite.SuiteSettings, mesh: Mesh) -> Callable:
  step = functools.partial(robustness_step, apply_fn=apply_fn, names=names, settings=settings)
  return parallel.distribute_eval_step(step, mesh)


@dataclasses.dataclass(frozen=True)
class SuiteResult:
  """Accuracy (fraction of real examples) per model and attack, and how many examples."""
  accuracy: dict[str, dict[str, float]]
  num_examples: int


def evaluate_suite(apply_fn: ApplyFn, variables: Mapping[str, Any],
                   batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, rng: jax.Array, *,
                   names: tuple[str, ...], settings: attack_suite.SuiteSettings,
                   on_batch: Callable[[int], None] | None = None) -> SuiteResult:
  """Runs `names` on every batch; `on_batch(real examples)` reports progress after each one.

  `variables` must be replicated over `mesh`; batches are this process's rows of each global
  batch with a float "mask" (0 for padding), as `input_pipeline.eval_batches` yields them.
  """
  if "transfer" in names and len(variables) < 2:
    raise ValueError("the transfer attack needs a second model to craft on; evaluate both "
                     "models of the run")
  step = _compiled_step(apply_fn, names, settings, mesh)
  sums = None
  for batch_index, batch in enumerate(batches):
    counts = step(variables, parallel.shard_host_batch(dict(batch), mesh),
                  jax.random.fold_in(rng, batch_index))
    sums = counts if sums is None else jax.tree.map(jnp.add, sums, counts)
    if on_batch is not None:  # after the batch is done, not dispatched, so rates are real
      jax.block_until_ready(counts)
      on_batch(int(np.sum(batch["mask"])) * jax.process_count())
  if sums is None:
    raise ValueError("the evaluation split yielded no batches")
  sums = parallel.fetch_replicated(sums)
  count = float(sums["count"])
  accuracy = {model: {name: float(sums[f"{model}/{name}"]) / count
                      for name in dict.fromkeys(("clean",) + names + (WORST_CASE,))}
              for model in variables}
  return SuiteResult(accuracy=accuracy, num_examples=int(count))


@dataclasses.dataclass(frozen=True)
class SanityCheck:
  check: str
  model: str
  passed: bool
  detail: str


def sanity_checks(accuracy: Mapping[str, Mapping[str, float]],
                  sweep: Mapping[str, Any] | None,
                  large_eps: Mapping[str, Any] | None) -> list[SanityCheck]:
  """The checks that catch a broken evaluation (Carlini et al. 2019, "On evaluating ...").

  - no attack raises accuracy above clean accuracy;
  - accuracy does not increase with eps;
  - at eps = 0 the attack leaves clean accuracy unchanged;
  - an attack with a very large eps drives accuracy to (near) zero; if not, gradients are
    probably masked and every number above overstates robustness.
  """
  checks = []
  for model, by_attack in accuracy.items():
    clean = by_attack["clean"]
    above = {name: value for name, value in by_attack.items() if value > clean}
    checks.append(SanityCheck(
        "robust accuracy <= clean accuracy", model, not above,
        "ok" if not above else "above clean: " + ", ".join(
            f"{name} {100 * value:.2f}%" for name, value in above.items())))
    if sweep is not None:
      eps_values, values = sweep["eps"], sweep["accuracy"][model]
      rises = [(eps_values[i], eps_values[i + 1]) for i in range(len(values) - 1)
               if values[i + 1] > values[i]]
      checks.append(SanityCheck(
          "accuracy non-increasing in eps", model, not rises,
          "ok" if not rises else "rises between eps " + ", ".join(
              f"{a:.4g}->{b:.4g}" for a, b in rises)))
      if 0.0 in eps_values:
        at_zero = values[eps_values.index(0.0)]
        checks.append(SanityCheck(
            "accuracy at eps=0 equals clean accuracy", model, at_zero == clean,
            f"{100 * at_zero:.2f}% at eps=0, {100 * clean:.2f}% clean"))
    if large_eps is not None:
      value = large_eps["accuracy"][model]
      checks.append(SanityCheck(
          f"a large-eps attack drives accuracy near 0 (<= {100 * large_eps['max_accuracy']:.4g}%)",
          model, value <= large_eps["max_accuracy"],
          f"{large_eps['attack']} at eps={large_eps['eps']:.4g}: {100 * value:.2f}%"
          + ("" if value <= large_eps["max_accuracy"]
             else " -- possible gradient masking: the other numbers may overstate robustness")))
  return checks
