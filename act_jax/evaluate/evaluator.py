"""The evaluator: accuracy of classifiers under attacks, per example, data-parallel over the mesh.

One evaluator, two callers: the training loop runs it for its periodic and final PGD-K, and
`python -m act_jax.evaluate` (and the study) runs it for a whole suite. A classifier is
`apply_fn(variables, images) -> logits` in eval mode with its own variables, so the models of
any run (and any other JAX classifier) are evaluated alike. Each attack is one compiled
per-device function (`jax.shard_map` inside `jax.jit`, as training runs) that attacks its shard
and returns per-example correctness; the host keeps one boolean per example and attack.

Cascades ("autoattack": APGD-CE, APGD-T, FAB-T, Square; or any "a+b+...") run as AutoAttack
does: each member attacks only the examples that are still classified correctly (on clean
inputs and under the members before it), which gives the same per-example AND at a fraction of
the cost, and the robust accuracy after each stage is reported. That needs data that can serve
any subset of its examples (the in-memory datasets); streamed data (ImageNet) runs every member
on every example instead, with the same result.
"""

import contextlib
import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from act_jax import parallel
from act_jax.attacks import parts as attack_parts
from act_jax.attacks import specs as attack_specs
from act_jax.data.pipeline import EvalData
from act_jax.train_state import ApplyFn

WORST_CASE = "worst_case"
CLEAN = attack_specs.parse("clean")
# (description, number of examples) -> a context manager whose value has `update(n)`.
ProgressFactory = Callable[[str, int], contextlib.AbstractContextManager]


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Accuracy (fraction of the evaluated examples) per model and attack.

  `attacked[model][attack]` counts the examples each attack ran on: all of them, except for
  the members of a cascade, which attack only the examples still correct.
  `stages[model][cascade]` lists, per member in order, the examples it attacked and the robust
  accuracy after it (the cascade's accuracy is the last stage's).
  """
  accuracy: dict[str, dict[str, float]]
  num_examples: int
  attacked: dict[str, dict[str, int]]
  stages: dict[str, dict[str, list[dict[str, Any]]]] = dataclasses.field(default_factory=dict)


def attack_key(rng: jax.Array, name: str) -> jax.Array:
  """The key of the attack called `name`: the same wherever the attack sits in a suite.

  Derived from the name, not from a position, so that "pgd20" draws the same random starts in
  the main suite, in the eps sweep and alone.
  """
  return jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def attack_correctness(target: Any, source: Any, key: jax.Array, batch: Mapping[str, jax.Array],
                       *, apply_fn: ApplyFn, spec: attack_specs.AttackSpec,
                       settings: attack_specs.AttackSettings) -> jax.Array:
  """Per device: whether the target model classifies each example correctly under `spec`.

  "clean" runs no attack; "transfer" crafts on `source` only, so nothing of the target can
  enter the crafting (a black-box attack); any other spec is a single white-box attack on the
  target. Each example's attack key is `key` folded with its index in the split, so results do
  not depend on how examples are batched or sharded.
  """
  images, labels = batch["image"], batch["label"]
  logits_fn = functools.partial(apply_fn, target)
  if spec.kind == "clean":
    adversarial = images
  else:
    crafted_on = functools.partial(apply_fn, source) if spec.kind == "transfer" else logits_fn
    adversarial = spec.build(settings)(crafted_on, images, labels,
                                       parallel.keys_by_index(key, batch["index"]))
  return jnp.argmax(logits_fn(adversarial), axis=-1) == labels


def stepped_correctness(apply_fn: ApplyFn, mesh: Mesh, program: attack_parts.SteppedAttack
                        ) -> Callable[[Any, Any, jax.Array, Mapping[str, jax.Array]], jax.Array]:
  """`attack_correctness` for a white-box attack run in parts (`parts.SteppedAttack`).

  Three compiled per-device functions, called from the host: the start, one call per part of
  the iterations (every part of a length shares one compiled function), and the correctness
  at the attack's result. The state between calls stays on the devices, sharded like the
  batch. Same result as the attack in one call, compiled many times faster on CPU
  (`parts.PART_STEPS`).
  """

  def inputs(target: Any, batch: Mapping[str, jax.Array]) -> tuple[Callable, jax.Array, jax.Array]:
    return functools.partial(apply_fn, target), batch["image"], batch["label"]

  def start(target: Any, key: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    logits_fn, images, labels = inputs(target, batch)
    return program.start(logits_fn, images, labels, parallel.keys_by_index(key, batch["index"]))

  def advance(target: Any, schedule: Any, batch_and_carry: tuple) -> dict[str, Any]:
    batch, carry = batch_and_carry
    logits_fn, images, labels = inputs(target, batch)
    return program.advance(logits_fn, images, labels, carry, schedule, unroll=True)

  def correctness(target: Any, batch_and_carry: tuple) -> jax.Array:
    batch, carry = batch_and_carry
    logits_fn, images, labels = inputs(target, batch)
    adversarial = program.adversarial(logits_fn, images, labels, carry)
    return jnp.argmax(logits_fn(adversarial), axis=-1) == labels

  start_fn = parallel.distribute_per_example(start, mesh, num_replicated=2)
  advance_fn = parallel.distribute_per_example(advance, mesh, num_replicated=2)
  correctness_fn = parallel.distribute_per_example(correctness, mesh, num_replicated=1)
  schedules = [parallel.replicate(schedule, mesh) for schedule in program.schedule_parts()]

  def run(target: Any, source: Any, key: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    del source  # a white-box attack
    carry = start_fn(target, key, batch)
    for schedule in schedules:
      carry = advance_fn(target, schedule, (batch, carry))
    return correctness_fn(target, (batch, carry))

  return run


class _Silent:
  def update(self, count: int) -> None:
    del count


def _no_progress(description: str, total: int) -> contextlib.AbstractContextManager:
  del description, total
  return contextlib.nullcontext(_Silent())


class Evaluator:
  """Runs a fixed list of attacks for every model it is given.

  Reported per model: "clean", every requested name, and with more than one attack
  "worst_case": the examples that survive every requested attack and are correct on clean
  inputs (the per-example AND, as AutoAttack reports robust accuracy). A composite
  ("autoattack") is the AND of clean and its members. "transfer" for one model is crafted on
  the next model given (cyclically), and counts the examples correct both on clean inputs and
  under it: a perturbation crafted on another model can as well move a misclassified example
  to its label, which is no robustness (and would read as robust accuracy above clean).
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
    """One compiled function per attack, shared by every model with the same shapes (APGD's
    and FAB's unrolled runs on CPU: a few, run in turn, see `stepped_correctness`).

    Separate functions, rather than one for the whole suite, keep XLA's compile time and
    memory in check: a suite of unrolled 100-step attacks in one graph took over 20 GB to
    compile on CPU.
    """
    program = spec.stepped(self.settings)
    if spec.name not in self._compiled and program is not None:
      self._compiled[spec.name] = stepped_correctness(self._apply_fn, self._mesh, program)
    if spec.name not in self._compiled:
      self._compiled[spec.name] = parallel.distribute_per_example(
          functools.partial(attack_correctness, apply_fn=self._apply_fn, spec=spec,
                            settings=self.settings), self._mesh, num_replicated=3)
    return self._compiled[spec.name]

  def _run(self, runs: list[tuple[str, str, attack_specs.AttackSpec]],
           variables: Mapping[str, Any], data: EvalData, indices: np.ndarray | None,
           rng: jax.Array, correct: dict[str, dict[str, np.ndarray]],
           bar: Any) -> None:
    """One pass over `indices` (default: all) running every (model, name, spec) of `runs`.

    Fills `correct[model][name][position]` for the examples of the pass; positions are
    indices into `data.example_indices`.
    """
    model_names = tuple(variables)
    position_of = {int(index): position for position, index in enumerate(data.example_indices)}
    for batch in data.batches(indices):
      sharded = parallel.shard_host_batch(dict(batch), self._mesh)
      outputs = {}
      for model, name, spec in runs:
        source = variables[model_names[(model_names.index(model) + 1) % len(model_names)]]
        key = attack_key(rng, spec.name)
        outputs[(model, name)] = self._correctness_fn(spec)(variables[model], source, key,
                                                            sharded)
      fetched = parallel.fetch_sharded({"outputs": outputs, "mask": sharded["mask"],
                                        "index": sharded["index"]})
      real = fetched["mask"] > 0
      positions = np.array([position_of[int(i)] for i in fetched["index"][real]], np.int64)
      for (model, name), value in fetched["outputs"].items():
        correct[model][name][positions] = value[real]
      bar.update(int(real.sum()))

  def __call__(self, variables: Mapping[str, Any], data: EvalData, rng: jax.Array, *,
               progress: ProgressFactory = _no_progress) -> EvalResult:
    """Evaluates every model of `variables` (name -> variables, replicated over the mesh)."""
    if any(s.kind == "transfer" for s in self.attacks) and len(variables) < 2:
      raise ValueError("the transfer attack needs a second model to craft on; evaluate two "
                       "models")
    cascade = data.supports_subsets
    composites = [s for s in self.attacks if s.kind == "composite"]
    cascaded = {m for s in composites for m in s.members} if cascade else set()
    standalone = [s for s in self.attacks if s.kind not in ("clean", "composite")]
    first_pass = list(dict.fromkeys([CLEAN, *standalone, *(
        m for m in self._members if m.name not in cascaded and m not in standalone)]))
    n = data.num_examples
    correct = {model: {} for model in variables}
    attacked = {model: {} for model in variables}
    stages = {model: {} for model in variables}
    for model in variables:
      for spec in first_pass:
        correct[model][spec.name] = np.zeros(n, bool)
        attacked[model][spec.name] = n
    with progress("clean and " + ", ".join(s.name for s in first_pass[1:]) if first_pass[1:]
                  else "clean", n) as bar:
      self._run([(model, spec.name, spec) for model in variables for spec in first_pass],
                variables, data, None, rng, correct, bar)
    for model in variables:
      for spec in standalone:
        if spec.kind == "transfer":
          correct[model][spec.name] &= correct[model]["clean"]

    for composite in composites:
      for model in variables:
        alive = correct[model]["clean"].copy()
        stages[model][composite.name] = []
        for member in composite.members:
          survivors = np.flatnonzero(alive)
          if member in correct[model]:  # ran on every example already
            result = correct[model][member]
          else:
            result = np.zeros(n, bool)
            key = f"{composite.name}:{member}"
            correct[model][key] = result
            attacked[model][member] = len(survivors)
            if len(survivors):
              with progress(f"{model}: {member} on {len(survivors)} still-robust examples",
                            len(survivors)) as bar:
                self._run([(model, key, attack_specs.parse(member))], variables, data,
                          data.example_indices[survivors], rng, correct, bar)
          alive &= result
          stages[model][composite.name].append(
              {"attack": member, "attacked": len(survivors), "accuracy": float(np.mean(alive))})
        correct[model][composite.name] = alive

    accuracy = {}
    for model in variables:
      if WORST_CASE in self.names:
        correct[model][WORST_CASE] = functools.reduce(
            np.logical_and, [correct[model]["clean"]]
            + [correct[model][s.name] for s in self.attacks])
      accuracy[model] = {name: float(np.mean(correct[model][name])) for name in self.names}
    return EvalResult(accuracy=accuracy, num_examples=n, attacked=attacked, stages=stages)


def training_settings(eval_config: Any, *, unroll: bool) -> attack_specs.AttackSettings:
  """The threat model of a run's own evaluation PGD (`config.eval`), as `AttackSettings`.

  The travel makes the suite's "pgd<K>" take steps of exactly `eval.step_size`.
  """
  return attack_specs.AttackSettings(eps=eval_config.eps,
                                     pgd_travel=attack_specs.training_pgd_travel(eval_config),
                                     unroll=unroll)
