"""Accuracy of classifiers under a suite of attacks, per example, data-parallel over the mesh.

A classifier is `apply_fn(variables, images) -> logits` (eval mode) with its own variables, so
the suite evaluates the two models of an ACT run and any other JAX classifier alike. Each attack
is one compiled per-device function (`jax.shard_map` inside `jax.jit`, as training does) that
attacks its shard and returns per-example correctness; the per-example ANDs and the global
counts are computed on the device arrays, so the host only divides at the end.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from act_jax import attack_suite, parallel
from act_jax.train_step import example_rngs

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


def attack_correctness(target: Any, source: Any, batch: Mapping[str, jax.Array], key: jax.Array,
                       *, apply_fn: ApplyFn, name: str,
                       settings: attack_suite.SuiteSettings) -> jax.Array:
  """Per device: whether the target model classifies each example correctly under attack `name`.

  "clean" runs no attack; "transfer" crafts on `source` only; any other name is a single
  white-box attack on the target. `key` seeds the attack's per-example keys (by global example
  index, so the result does not depend on how the batch is sharded).
  """
  images, labels = batch["image"], batch["label"]
  logits_fn = functools.partial(apply_fn, target)
  if name == "clean":
    adversarial = images
  else:
    rngs = example_rngs(key, 0, images.shape[0])
    if name == "transfer":
      adversarial = transfer_attack(functools.partial(apply_fn, source), images, labels, rngs,
                                    settings)
    else:
      adversarial = attack_suite.build_attack(name, settings)(logits_fn, images, labels, rngs)
  return _predictions(logits_fn, adversarial) == labels


@functools.lru_cache(maxsize=64)
def _compiled_attack(apply_fn: ApplyFn, name: str, settings: attack_suite.SuiteSettings,
                     mesh: Mesh) -> Callable:
  """One compiled function per attack, shared by every model with the same shapes.

  Separate functions, rather than one for the whole suite, keep XLA's compile time and memory
  in check: a suite of unrolled 100-step attacks in one graph took over 20 GB to compile on CPU.
  """
  mapped = jax.shard_map(
      functools.partial(attack_correctness, apply_fn=apply_fn, name=name, settings=settings),
      mesh=mesh, in_specs=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED,
                           parallel.REPLICATED),
      out_specs=parallel.SHARDED, check_vma=False)
  return jax.jit(mapped)


@jax.jit
def _tally(correct: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """Global counts of correct real examples per entry of `correct`, and of real examples."""
  return {name: jnp.sum(value * mask) for name, value in correct.items()} | {
      "count": jnp.sum(mask)}


def batch_counts(variables: Mapping[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array,
                 mesh: Mesh, *, apply_fn: ApplyFn, names: tuple[str, ...],
                 settings: attack_suite.SuiteSettings) -> dict[str, jax.Array]:
  """How many real examples of one global batch each model gets right under each attack.

  Keys: "count", and "<model>/<name>" for "clean", every name in `names` and "worst_case": the
  examples that survive every attack in `names` and are correct on clean inputs (the per-example
  AND, as AutoAttack reports robust accuracy). Composites are the AND of their members.
  "transfer" for one model is crafted on the next model of `variables` (cyclically). Attack i of
  the expanded white-box list is seeded with `fold_in(rng, i)`, transfer with the next index.
  """
  model_names = tuple(variables)
  members = attack_suite.white_box_members(names)
  keys = {member: jax.random.fold_in(rng, index) for index, member in enumerate(members)}
  keys["transfer"] = jax.random.fold_in(rng, len(members))
  keys["clean"] = rng
  correct = {}
  for model_index, model_name in enumerate(model_names):
    source = variables[model_names[(model_index + 1) % len(model_names)]]
    per_attack = {}
    for name in dict.fromkeys(("clean",) + members
                              + (("transfer",) if "transfer" in names else ())):
      per_attack[name] = _compiled_attack(apply_fn, name, settings, mesh)(
          variables[model_name], source, batch, keys[name])
    for name, parts in attack_suite.COMPOSITES.items():
      if name in names:
        per_attack[name] = functools.reduce(jnp.logical_and, [per_attack[p] for p in parts])
    per_attack[WORST_CASE] = functools.reduce(
        jnp.logical_and, [per_attack["clean"]] + [per_attack[n] for n in names])
    for name in dict.fromkeys(("clean",) + names + (WORST_CASE,)):
      correct[f"{model_name}/{name}"] = per_attack[name]
  return _tally(correct, batch["mask"])


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
  sums = None
  for batch_index, batch in enumerate(batches):
    counts = batch_counts(variables, parallel.shard_host_batch(dict(batch), mesh),
                          jax.random.fold_in(rng, batch_index), mesh, apply_fn=apply_fn,
                          names=names, settings=settings)
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
