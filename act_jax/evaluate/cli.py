"""`python -m act_jax.evaluate`: the robustness of a trained run's models under a suite of attacks.

    python -m act_jax.evaluate --workdir=DIR \
        --attacks=clean,pgd20,pgd100,apgd-ce,apgd-t,autoattack,transfer --eps=0.1

Writes `DIR/robustness/<split>_step<N>_<attacks>_<settings digest>.json` (accuracies, the eps
sweep, the sanity checks and what each attack ran), the eps sweep's plot beside it, and prints a
table. An evaluation never replaces an earlier one: other settings or another checkpoint get
another file, and a repeat gets a numbered one. Runs data-parallel over every device (and, with
`--distributed`, every host), like training.
"""

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import app, flags, logging
from etils import epath

from act_jax import api, distributed, interruption, parallel, reporting
from act_jax.attacks import specs as attack_specs
from act_jax.data import pipeline
from act_jax.errors import UserError
from act_jax.evaluate import evaluator as evaluator_lib
from act_jax.evaluate import report, sanity
from act_jax.train_state import eval_mode_apply

DEFAULT_ATTACKS = "clean,pgd20,pgd100,apgd-ce,apgd-t,autoattack,transfer"
DEFAULT_SWEEP_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "An act_jax training workdir (config.json and checkpoints).",
                    required=True)
flags.DEFINE_string("attacks", None,
                    "Comma-separated attacks: " + attack_specs.valid_names_message() + " (default: "
                    f"{DEFAULT_ATTACKS}; transfer only for runs with two models).")
flags.DEFINE_float("eps", None, "L-inf radius (default: the run's config.eval.eps).")
flags.DEFINE_float("eps_l2", 1.0, "L2 radius for the pgd<K>-l2 attacks.")
flags.DEFINE_float("pgd_travel", None,
                   "Total travel of PGD-K in units of eps; each step is travel * eps / K (default: "
                   "the run's eval PGD, config.eval.step_size * num_steps / eps).")
flags.DEFINE_integer("apgd_steps", attack_specs.APGD_STEPS,
                     "Iterations of APGD-CE/DLR and of APGD-T per target (AutoAttack: 100).")
flags.DEFINE_integer("fab_steps", attack_specs.FAB_STEPS,
                     "Iterations of FAB-T per target (AutoAttack: 100).")
flags.DEFINE_integer("square_queries", attack_specs.SQUARE_QUERIES,
                     "Queries of the Square attack (AutoAttack: 5000).")
flags.DEFINE_integer("restarts", 1, "Restarts of every attack (per-example worst case; "
                     "AutoAttack: 1).")
flags.DEFINE_integer("num_examples", None, "Evaluate the first N examples (default: all).")
flags.DEFINE_enum("split", "test", ("test", "validation"),
                  "test, or the run's validation hold-out (dataset.validation_examples).")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: the run's eval batch).")
flags.DEFINE_list("eps_sweep", None,
                  "L-inf radii for the accuracy-vs-eps curve (default: 0, 0.25, 0.5, 1, 1.5 and 2 "
                  "times --eps); pass an empty value to skip the sweep.")
flags.DEFINE_string("sweep_attack", "pgd20", "The attack run at every eps of the sweep.")
flags.DEFINE_float("large_eps", 1.0, "Radius of the gradient-masking check (1.0: unbounded).")
flags.DEFINE_float("large_eps_max_accuracy", 0.05,
                   "Accuracy at --large_eps above which a gradient-masking warning is raised.")
flags.DEFINE_list("models", None,
                  "Which of the run's models to evaluate (default: all: natural and robust for "
                  "ACT, the one model of the other methods).")
flags.DEFINE_integer("step", None, "Evaluate this checkpoint step (default: the newest).")
flags.DEFINE_string("output", None, "Results JSON, which must not exist yet (default: a new "
                    "file in WORKDIR/robustness/ named by the split, step, attacks and settings).")
flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts and targets.")
distributed.define_flag()


class UsageError(UserError, ValueError):
  """A flag value is unusable; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class EvaluationRequest:
  """Everything `evaluate_run` needs; None fields take the run's defaults."""
  workdir: str
  attacks: str | None = None
  eps: float | None = None
  eps_l2: float = 1.0
  pgd_travel: float | None = None
  restarts: int = 1
  apgd_steps: int = attack_specs.APGD_STEPS
  fab_steps: int = attack_specs.FAB_STEPS
  square_queries: int = attack_specs.SQUARE_QUERIES
  num_examples: int | None = None
  split: str = "test"
  batch_size: int | None = None
  eps_sweep: Sequence[float] | None = None
  sweep_attack: str = "pgd20"
  large_eps: float = 1.0
  large_eps_max_accuracy: float = 0.05
  models: Sequence[str] | None = None
  step: int | None = None
  output: str | None = None
  seed: int = 0
  show_progress: bool = True


def _check(request: EvaluationRequest
           ) -> tuple[tuple[attack_specs.AttackSpec, ...] | None, attack_specs.AttackSpec]:
  """The checks that need no run; the attacks are None when the run's default applies."""
  attacks = None
  if request.attacks is not None:
    try:
      attacks = attack_specs.parse_names(request.attacks)
    except ValueError as error:
      raise UsageError(f"--attacks={request.attacks}: {error}") from None
  try:
    sweep_attack = attack_specs.parse(request.sweep_attack)
  except ValueError as error:
    raise UsageError(f"--sweep_attack={request.sweep_attack}: {error}") from None
  if not sweep_attack.is_white_box:
    raise UsageError(f"--sweep_attack={sweep_attack.name}: must be a single white-box attack")
  if request.eps is not None and request.eps > 1:
    raise UsageError(f"--eps={request.eps}: must be in [0, 1]: images are in [0, 1], so 8/255 "
                     "is 0.0314")
  for flag, value in (("--eps", request.eps), ("--eps_l2", request.eps_l2),
                      ("--large_eps", request.large_eps)):
    if value is not None and value < 0:
      raise UsageError(f"{flag}={value}: must be >= 0")
  for value in request.eps_sweep or ():
    if value < 0:
      raise UsageError(f"--eps_sweep: {value} must be >= 0")
  if request.step is not None and request.step < 0:
    raise UsageError(f"--step={request.step}: must be >= 0 (a checkpoint's step)")
  for flag, value in (("--restarts", request.restarts), ("--apgd_steps", request.apgd_steps),
                      ("--fab_steps", request.fab_steps),
                      ("--square_queries", request.square_queries),
                      ("--num_examples", request.num_examples),
                      ("--batch_size", request.batch_size)):
    if value is not None and value < 1:
      raise UsageError(f"{flag}={value}: must be >= 1")
  return attacks, sweep_attack


def _check_against_run(request: EvaluationRequest, run: api.TrainedRun,
                       attacks: tuple[attack_specs.AttackSpec, ...] | None
                       ) -> tuple[tuple[str, ...], tuple[attack_specs.AttackSpec, ...]]:
  """The models to evaluate and the attacks to run, checked against what the run holds."""
  available = run.method.model_names
  models = tuple(dict.fromkeys(request.models or available))
  unknown = [m for m in models if m not in available]
  if unknown or not models:
    raise UsageError(f"--models={','.join(models)}: this {run.method.name} run has "
                     f"{', '.join(available)}")
  if attacks is None:
    attacks = tuple(a for a in attack_specs.parse_names(DEFAULT_ATTACKS)
                    if a.kind != "transfer" or len(models) > 1)
  if any(a.kind == "transfer" for a in attacks) and len(models) < 2:
    raise UsageError("--attacks=...transfer needs two models, --models=natural,robust of an "
                     "ACT run (it crafts on one model and measures the other)")
  return models, attacks


def progress_bars(enabled: bool) -> evaluator_lib.ProgressFactory:
  """tqdm bars (img/s and ETA) for the evaluator's passes, on process 0 only."""
  import tqdm

  def factory(description: str, total: int):
    return tqdm.tqdm(total=total, desc=description, unit="img", dynamic_ncols=True,
                     file=sys.stdout, disable=not enabled, mininterval=1.0)

  return factory


def evaluate_run(request: EvaluationRequest) -> dict[str, Any]:
  """Evaluates the run in `request.workdir`; returns (and writes) the results."""
  attacks, sweep_attack = _check(request)
  mesh = parallel.make_mesh()
  run = api.load_run(request.workdir, step=request.step, devices=list(mesh.devices.flat))
  models, attacks = _check_against_run(request, run, attacks)
  config = run.config
  eps = config.eval.eps if request.eps is None else request.eps
  travel = request.pgd_travel
  if travel is None:
    travel = attack_specs.training_pgd_travel(config.eval)
  settings = attack_specs.AttackSettings(eps=eps, eps_l2=request.eps_l2, pgd_travel=travel,
                                         restarts=request.restarts,
                                         apgd_steps=request.apgd_steps,
                                         fab_steps=request.fab_steps,
                                         square_queries=request.square_queries,
                                         unroll=parallel.unrolls_attack_loops(mesh))
  batch_size = request.batch_size or config.eval.batch_size
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise UsageError(f"--batch_size={batch_size}: must be divisible by the number of devices "
                     f"({mesh.size}) and processes ({jax.process_count()})")
  variables = {m: run.models[m].variables for m in models}
  apply_fn = eval_mode_apply(run.model.apply)
  is_chief = jax.process_index() == 0
  rng = jax.random.PRNGKey(request.seed)
  try:
    data = pipeline.eval_data(config, split=request.split, num_examples=request.num_examples,
                              batch_size=batch_size)
  except ValueError as error:
    raise UsageError(f"--split={request.split}: {error}") from None
  if data.num_examples == 0:
    holdout = config.dataset.validation_examples
    raise UsageError(f"--split={request.split}: no examples to evaluate"
                     + (f" (this run holds out dataset.validation_examples = {holdout})"
                        if request.split == "validation" else "") + "; nothing was written")
  output = _output_path(request, run.step, attacks, settings)
  progress = progress_bars(request.show_progress and is_chief)

  def run_suite(suite_attacks, suite_settings):
    evaluator = evaluator_lib.Evaluator(apply_fn, mesh, suite_attacks, suite_settings)
    return evaluator(variables, data, rng, progress=progress)

  with interruption.raising_on_signals("the evaluation", "nothing of it was written"):
    main, sweep, large_eps = _run_suites(run_suite, attacks, settings, sweep_attack, request,
                                         models)
  checks = sanity.sanity_checks(main.accuracy, sweep, large_eps)
  plot = output.with_name(output.stem + "_eps_sweep.png") if sweep else None
  results = {
      "workdir": str(request.workdir), "method": run.method.name,
      "checkpoint_step": run.step, "split": request.split, "num_examples": main.num_examples,
      "examples_attacked": main.attacked, "eps": eps, "eps_l2": request.eps_l2,
      "pgd_travel": travel, "restarts": request.restarts, "apgd_steps": request.apgd_steps,
      "fab_steps": request.fab_steps, "square_queries": request.square_queries,
      "seed": request.seed,
      "attacks": {spec.name: spec.describe(settings) for spec in attacks},
      "accuracy": main.accuracy, "cascade_stages": main.stages, "eps_sweep": sweep,
      "large_eps": large_eps,
      "sanity_checks": [dataclasses.asdict(check) for check in checks],
      "all_sanity_checks_passed": all(check.passed for check in checks),
      "plot": str(plot) if plot else None,
  }
  failed = [check for check in checks if not check.passed]
  if is_chief:
    output.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(output, results)
    if plot:
      report.plot_eps_sweep(sweep, plot, eps=eps)
    print("\n" + report.accuracy_table(main.accuracy, eps=eps), flush=True)
    if any(main.stages.values()):
      print("\n" + report.stages_table(main.stages), flush=True)
    print(f"\n{main.num_examples} {request.split} examples, checkpoint step {run.step}; "
          f"results in {output}"
          + (f", curve in {plot}" if plot else ""), flush=True)
    for check in failed:
      message = f"sanity check failed for {check.model}: {check.check}: {check.detail}"
      print(f"warning: {message}", file=sys.stderr, flush=True)
  return results


def _run_suites(run_suite: Callable[..., Any], attacks: Sequence[attack_specs.AttackSpec],
                settings: attack_specs.AttackSettings, sweep_attack: attack_specs.AttackSpec,
                request: EvaluationRequest, models: Sequence[str]
                ) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
  """The main suite, the eps sweep and the large-eps check: (main, sweep, large_eps)."""
  eps = settings.eps
  main = run_suite(attacks, settings)
  sweep_eps = (sorted(set(request.eps_sweep)) if request.eps_sweep is not None
               else sorted({m * eps for m in DEFAULT_SWEEP_MULTIPLES}))
  sweep = None
  if sweep_eps:
    sweep = {"attack": sweep_attack.name, "eps": sweep_eps,
             "accuracy": {m: [] for m in models}}
    for value in sweep_eps:
      result = run_suite((sweep_attack,), dataclasses.replace(settings, eps=value))
      for m in models:
        sweep["accuracy"][m].append(result.accuracy[m][sweep_attack.name])
  large = run_suite((sweep_attack,), dataclasses.replace(settings, eps=request.large_eps))
  large_eps = {"attack": sweep_attack.name, "eps": request.large_eps,
               "max_accuracy": request.large_eps_max_accuracy,
               "accuracy": {m: large.accuracy[m][sweep_attack.name] for m in models}}
  return main, sweep, large_eps


def _output_path(request: EvaluationRequest, step: int,
                 attacks: Sequence[attack_specs.AttackSpec],
                 settings: attack_specs.AttackSettings) -> epath.Path:
  """Where this evaluation's JSON goes: a path no earlier evaluation holds."""
  if request.output is not None:
    output = epath.Path(request.output)
    if output.exists():
      raise UsageError(f"--output={request.output} exists; an evaluation never replaces another:"
                       " give a new path, or leave --output out")
    return output
  numbers = {k: v for k, v in dataclasses.asdict(settings).items() if k != "unroll"}
  described = json.dumps([numbers, request.num_examples, request.seed,
                          request.models, request.eps_sweep, request.sweep_attack,
                          request.large_eps, request.batch_size], sort_keys=True, default=str)
  digest = hashlib.sha256(described.encode()).hexdigest()[:8]
  names = "+".join(spec.name for spec in attacks)[:80]
  directory = epath.Path(request.workdir) / "robustness"
  stem = f"{request.split}_step{step}_{names}_{digest}"
  output, repeat = directory / f"{stem}.json", 1
  while output.exists():
    repeat += 1
    output = directory / f"{stem}_{repeat}.json"
  return output


def _run_eval_batch_size() -> int:
  """The run's `eval.batch_size`, read before JAX starts (1 where the workdir has none)."""
  config_path = epath.Path(FLAGS.workdir) / "config.json"
  if not config_path.exists():
    return 1
  return int(json.loads(config_path.read_text())["eval"]["batch_size"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS["verbosity"].present == 0:  # orbax warns that the read-only checkpoint is read-only
    logging.set_verbosity(logging.ERROR)
  if not distributed.initialize_from_flags():
    parallel.use_one_cpu_device_per_core([FLAGS.batch_size or _run_eval_batch_size()])
  sweep = FLAGS.eps_sweep
  try:
    eps_sweep = None if sweep is None else [float(v) for v in sweep]
  except ValueError as error:
    raise UsageError(f"--eps_sweep={','.join(sweep)}: {error}") from None
  evaluate_run(EvaluationRequest(
      workdir=FLAGS.workdir, attacks=FLAGS.attacks, eps=FLAGS.eps,
      eps_l2=FLAGS.eps_l2, pgd_travel=FLAGS.pgd_travel, restarts=FLAGS.restarts,
      apgd_steps=FLAGS.apgd_steps, fab_steps=FLAGS.fab_steps,
      square_queries=FLAGS.square_queries, num_examples=FLAGS.num_examples,
      split=FLAGS.split,
      batch_size=FLAGS.batch_size, eps_sweep=eps_sweep, sweep_attack=FLAGS.sweep_attack,
      large_eps=FLAGS.large_eps, large_eps_max_accuracy=FLAGS.large_eps_max_accuracy,
      models=FLAGS.models, step=FLAGS.step, output=FLAGS.output, seed=FLAGS.seed))
