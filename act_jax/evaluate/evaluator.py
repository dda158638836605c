"""The evaluator: accuracy of classifiers under attacks, per example, data-parallel over the mesh.

One evaluator, two callers: the training loop runs it for its periodic and final PGD-K, and
`python -m act_jax.evaluate` runs it for a whole suite. A classifier is `apply_fn(variables,
images) -> logits` in eval mode with its own variables, so the models of any run (and any other
JAX classifier) are evaluated alike. Each attack is one compiled per-device function
(`jax.shard_map` inside `jax.jit`, as training runs) that attacks its shard and returns per-example
correctness;
the per-example ANDs and the global counts are computed on the device arrays, so the host only
divides at the end.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from act_jax import parallel
from act_jax.attacks import specs as attack_specs
from act_jax.train_state import ApplyFn

WORST_CASE = "worst_case"


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Accuracy (fraction of real examples) per model and attack, and how many examples."""
  accuracy: dict[str, dict[str, float]]
  num_examples: int


def attack_correctness(target: Any, source: Any, key: jax.Array, batch: Mapping[str, jax.Array],
                       *, apply_fn: ApplyFn, spec: attack_specs.AttackSpec,
                       settings: attack_specs.AttackSettings) -> jax.Array:
  """Per device: whether the target model classifies each example correctly under `spec`.

  "clean" runs no attack; "transfer" crafts on `source` only, so nothing of the target can
  enter the crafting (a black-box attack); any other spec is a single white-box attack on the
  target. `key` seeds the attack's per-example keys (by global example index, so the result
  does not depend on how the batch is sharded).
  """
  images, labels = batch["image"], batch["label"]
  logits_fn = functools.partial(apply_fn, target)
  if spec.kind == "clean":
    adversarial = images
  else:
    crafted_on = functools.partial(apply_fn, source) if spec.kind == "transfer" else logits_fn
    adversarial = spec.build(settings)(crafted_on, images, labels,
                                       parallel.example_rngs(key, 0, images.shape[0]))
  return jnp.argmax(logits_fn(adversarial), axis=-1) == labels


@jax.jit
def _tally(correct: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """Global counts of correct real examples per entry of `correct`, and of real examples."""
  return {name: jnp.sum(value * mask) for name, value in correct.items()} | {
      "count": jnp.sum(mask)}


class Evaluator:
  """Runs a fixed list of attacks on every batch for every model it is given.

  Reported per model: "clean", every requested name, and with more than one attack
  "worst_case": the examples that survive every requested attack and are correct on clean
  inputs (the per-example AND, as AutoAttack reports robust accuracy). A composite
  ("autoattack") is the AND of its members.
  "transfer" for one model is crafted on the next model given (cyclically).
  """

  def __init__(self, apply_fn: ApplyFn, mesh: Mesh, attacks: Iterable[attack_specs.AttackSpec],
               settings: attack_specs.AttackSettings):
    self.attacks = tuple(attacks)
    self.settings = settings
    self._apply_fn = apply_fn
    self._mesh = mesh
    members = []
    for spec in self.attacks:
      for member in (spec.members or (spec.name,)):
        member_spec = attack_specs.parse(member)
        if member_spec.is_white_box and member_spec not in members:
          members.append(member_spec)
    # Attack i of the white-box members is seeded with fold_in(rng, i), transfer with the next.
    self._members = tuple(members)
    self._compiled: dict[str, Callable] = {}

  @property
  def names(self) -> tuple[str, ...]:
    """The reported columns: clean, the requested attacks, and the worst case of several."""
    requested = tuple(s.name for s in self.attacks if s.kind != "clean")
    worst_case = (WORST_CASE,) if len(requested) > 1 else ()
    return ("clean", *requested, *worst_case)

  def describe(self) -> dict[str, str]:
    return {spec.name: spec.describe(self.settings) for spec in self.attacks}

  def _correctness_fn(self, spec: attack_specs.AttackSpec) -> Callable:
    """One compiled function per attack, shared by every model with the same shapes.

    Separate functions, rather than one for the whole suite, keep XLA's compile time and
    memory in check: a suite of unrolled 100-step attacks in one graph took over 20 GB to
    compile on CPU.
    """
    if spec.name not in self._compiled:
      self._compiled[spec.name] = parallel.distribute_per_example(
          functools.partial(attack_correctness, apply_fn=self._apply_fn, spec=spec,
                            settings=self.settings), self._mesh, num_replicated=3)
    return self._compiled[spec.name]

  def batch_counts(self, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
                   rng: jax.Array) -> dict[str, jax.Array]:
    """How many real examples of one global batch each model gets right under each attack.

    Keys: "count", and "<model>/<name>" for every name in `self.names`.
    """
    model_names = tuple(variables)
    keys = {spec.name: jax.random.fold_in(rng, index) for index, spec in enumerate(self._members)}
    keys["transfer"] = jax.random.fold_in(rng, len(self._members))
    keys["clean"] = rng
    runs = (attack_specs.parse("clean"), *self._members,
            *(s for s in self.attacks if s.kind == "transfer"))
    correct = {}
    for model_index, model_name in enumerate(model_names):
      source = variables[model_names[(model_index + 1) % len(model_names)]]
      per_attack = {spec.name: self._correctness_fn(spec)(variables[model_name], source,
                                                          keys[spec.name], batch)
                    for spec in runs}
      for spec in self.attacks:
        if spec.kind == "composite":
          per_attack[spec.name] = functools.reduce(jnp.logical_and,
                                                   [per_attack[m] for m in spec.members])
      if WORST_CASE in self.names:
        per_attack[WORST_CASE] = functools.reduce(
            jnp.logical_and, [per_attack["clean"]] + [per_attack[s.name] for s in self.attacks])
      for name in self.names:
        correct[f"{model_name}/{name}"] = per_attack[name]
    return _tally(correct, batch["mask"])

  def __call__(self, variables: Mapping[str, Any], batches: Iterable[Mapping[str, np.ndarray]],
               rng: jax.Array, *, on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluates every model of `variables` (name -> variables, replicated over the mesh).

    `batches` are this process's rows of each global batch with a float "mask" (0 for
    padding), as the input pipeline's `eval_batches` yields them; `on_batch(real examples)`
    reports progress after each batch.
    """
    if any(s.kind == "transfer" for s in self.attacks) and len(variables) < 2:
      raise ValueError("the transfer attack needs a second model to craft on; evaluate two "
                       "models")
    sums = None
    for batch_index, batch in enumerate(batches):
      counts = self.batch_counts(variables, parallel.shard_host_batch(dict(batch), self._mesh),
                                 jax.random.fold_in(rng, batch_index))
      sums = counts if sums is None else jax.tree.map(jnp.add, sums, counts)
      if on_batch is not None:  # after the batch is done, not dispatched, so rates are real
        jax.block_until_ready(counts)
        on_batch(int(np.sum(batch["mask"])) * jax.process_count())
    if sums is None:
      raise ValueError("the evaluation split yielded no batches")
    sums = parallel.fetch_replicated(sums)
    count = float(sums["count"])
    accuracy = {model: {name: float(sums[f"{model}/{name}"]) / count for name in self.names}
                for model in variables}
    return EvalResult(accuracy=accuracy, num_examples=int(count))


def training_settings(eval_config: Any, *, unroll: bool) -> attack_specs.AttackSettings:
  """The threat model of a run's own evaluation PGD (`config.eval`), as `AttackSettings`.

  The travel makes the suite's "pgd<K>" take steps of exactly `eval.step_size`.
  """
  travel = (eval_config.step_size * eval_config.num_steps / eval_config.eps
            if eval_config.eps > 0 else 2.5)
  return attack_specs.AttackSettings(eps=eval_config.eps, pgd_travel=travel, unroll=unroll)
