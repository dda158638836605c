"""Runs a study: every method x training budget x seed on one recipe, evaluated by one evaluator.

Every run gets the same model, optimiser and attack budget: only `config.method`,
`config.seed` and the number of epochs differ. A budget of E epochs scales the recipe's
learning-rate schedule with it (each piecewise cut stays at the same fraction of training).
Run (method, E, seed) trains in WORKDIR/<method>/epochs<E>/seed<seed>, so a finished run is
skipped and an interrupted one resumes from its checkpoints when the study is run again.

Each run evaluates clean and PGD-20 accuracy on the first `curve_examples` test examples every
epoch: its learning curve, for reporting only (nothing is chosen on it). Clean and PGD-20
accuracy come from each run's final evaluation on the whole test split; the study adds a
cascade (default: the standard AutoAttack, APGD-CE, APGD-T, FAB-T and Square, each attack only
on the examples still robust) on the first `autoattack_examples` test examples. A trained run
whose evaluation used other settings is evaluated again, not retrained, and its record names
the cascade each number came from. The tables and plots are
rewritten after every finished run, marked partial until the whole grid is done.

"Test" above is `config.eval.split`: with `eval.split=validation` (and
`dataset.validation_examples`) every number, the cascade's included, comes from the validation
hold-out, which is how a hyperparameter is chosen without looking at the test split.
"""

import dataclasses
import datetime
import sys
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from act_jax import api, interruption, methods, parallel, provenance, reporting, train, workdir_lock
from act_jax import workdir as workdir_lib
from act_jax.attacks import specs as attack_specs
from act_jax.data import datasets, pipeline
from act_jax.errors import UserError
from act_jax.evaluate import evaluator as evaluator_lib
from act_jax.study import report
from act_jax.train_state import eval_mode_apply

STUDY_PGD_STEPS = 20
RUN_RECORD = "study_run.json"


class StudyError(UserError, ValueError):
  """A study request that cannot run; the message names the flag or field."""


@dataclasses.dataclass(frozen=True)
class StudyRequest:
  config: ml_collections.ConfigDict
  workdir: str
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  epochs: tuple[int, ...] = ()  # training budgets; empty: the recipe's train.epochs
  autoattack_examples: int = 1000
  apgd_steps: int = attack_specs.APGD_STEPS
  fab_steps: int = attack_specs.FAB_STEPS
  square_queries: int = attack_specs.SQUARE_QUERIES
  cascade: str = "autoattack"
  curve_examples: int = 2000  # 0: no learning curves
  output_dir: str | None = None
  command: str = ""
  report_only: bool = False

  @property
  def budgets(self) -> tuple[int, ...]:
    return self.epochs or (int(self.config.train.epochs),)


@dataclasses.dataclass(frozen=True)
class RunKey:
  """One run of the grid: a method trained for `epochs` epochs from `seed`."""
  method: str
  epochs: int
  seed: int

  def directory(self, workdir: epath.Path) -> epath.Path:
    return workdir / self.method / f"epochs{self.epochs}" / f"seed{self.seed}"

  def describe(self) -> str:
    return f"{self.method}, {self.epochs} epochs, seed {self.seed}"


def grid(request: StudyRequest) -> list[RunKey]:
  """The runs in the order they train: budgets as given, then seeds, then methods, so that a
  study stopped early has every method at its first seeds to compare."""
  return [RunKey(method, epochs, seed) for epochs in request.budgets
          for seed in request.seeds for method in request.methods]


def check(request: StudyRequest) -> None:
  unknown = [m for m in request.methods if m not in methods.METHOD_NAMES]
  if unknown or not request.methods:
    raise StudyError(f"--methods={','.join(request.methods)}: allowed: "
                     f"{', '.join(methods.METHOD_NAMES)}")
  if not request.seeds or len(set(request.seeds)) != len(request.seeds):
    raise StudyError(f"--seeds={','.join(map(str, request.seeds))}: give distinct integers")
  if len(set(request.budgets)) != len(request.budgets) or min(request.budgets) < 1:
    raise StudyError(f"--epochs={','.join(map(str, request.budgets))}: give distinct positive "
                     "integers")
  if request.config.train.max_steps is not None and len(request.budgets) > 1:
    raise StudyError(f"config.train.max_steps = {request.config.train.max_steps} would cut "
                     "every budget of --epochs to the same length")
  if request.config.eval.num_steps != STUDY_PGD_STEPS:
    raise StudyError(f"config.eval.num_steps = {request.config.eval.num_steps}: the study "
                     f"reports PGD-{STUDY_PGD_STEPS}")
  for flag, value in (("--autoattack_examples", request.autoattack_examples),
                      ("--apgd_steps", request.apgd_steps), ("--fab_steps", request.fab_steps),
                      ("--square_queries", request.square_queries)):
    if value < 1:
      raise StudyError(f"{flag}={value}: must be >= 1")
  try:
    cascade = attack_specs.parse(request.cascade)
  except ValueError as error:
    raise StudyError(f"--cascade={request.cascade}: {error}") from None
  if cascade.kind != "composite":
    raise StudyError(f"--cascade={request.cascade}: must be a cascade: autoattack or "
                     "members joined by +, e.g. apgd-ce+apgd-t")
  if request.curve_examples < 0:
    raise StudyError(f"--curve_examples={request.curve_examples}: must be >= 0 (0: no curves)")


def run_config(base: ml_collections.ConfigDict, key: RunKey, *, steps_per_epoch: int,
               curve_examples: int) -> ml_collections.ConfigDict:
  """The recipe with this run's method, seed and budget: nothing else differs between runs.

  The budget scales the piecewise schedule's cuts with it: the recipe's cut at 2.25 of 3 epochs
  is at 7.5 of 10 and 22.5 of 30, three quarters of training in each.
  """
  config = ml_collections.ConfigDict(base.to_dict())
  config.method, config.seed = key.method, key.seed
  recipe_epochs = base.train.epochs
  config.train.epochs = key.epochs
  config.optim.lr_decay_epochs = tuple(
      round(epoch * key.epochs / recipe_epochs, 6) for epoch in base.optim.lr_decay_epochs)
  if curve_examples:
    config.train.eval_every_steps = steps_per_epoch
    config.eval.periodic_num_examples = curve_examples
  return config


def evaluation_split_size(config: ml_collections.ConfigDict) -> int:
  """How many examples the runs' evaluation split holds: the test split, or the validation
  hold-out carved from the training split."""
  if config.eval.split == "validation":
    return config.dataset.validation_examples
  return datasets.dataset_info(config.dataset).num_test


def autoattack_evaluation(run_dir: str, request: StudyRequest) -> dict[str, Any]:
  """Clean, PGD-20 and the request's cascade (each stage reported) on the first
  `autoattack_examples` examples of the run's evaluation split (`eval.split`), so that a study
  on the validation hold-out never looks at the test split."""
  cascade = attack_specs.parse(request.cascade).name
  mesh = parallel.make_mesh()
  run = api.load_run(run_dir, devices=list(mesh.devices.flat))
  settings = dataclasses.replace(
      evaluator_lib.training_settings(run.config.eval,
                                      unroll=parallel.unrolls_attack_loops(mesh)),
      apgd_steps=request.apgd_steps, fab_steps=request.fab_steps,
      square_queries=request.square_queries)
  evaluator = evaluator_lib.Evaluator(eval_mode_apply(run.model.apply), mesh,
                                      attack_specs.parse_names(f"pgd20,{cascade}"), settings)
  data = pipeline.eval_data(run.config, split=run.config.eval.split,
                            num_examples=request.autoattack_examples)
  result = evaluator({name: state.variables for name, state in run.models.items()}, data,
                     jax.random.PRNGKey(0))
  return {"checkpoint_step": run.step, "num_examples": result.num_examples,
          "apgd_steps": request.apgd_steps, "fab_steps": request.fab_steps,
          "square_queries": request.square_queries, "cascade": cascade,
          "accuracy": result.accuracy, "cascade_stages": result.stages,
          "examples_attacked": result.attacked, "attacks": evaluator.describe()}


def evaluation_cascade(evaluation: dict[str, Any]) -> tuple[str, str]:
  """(the cascade a study evaluation ran, its key in the evaluation's accuracies).

  Records from before the standard AutoAttack existed here name no cascade: theirs was the
  gradient-based part, APGD-CE + APGD-T, stored under "autoattack".
  """
  if "cascade" in evaluation:
    return evaluation["cascade"], evaluation["cascade"]
  return report.LEGACY_CASCADE, "autoattack"


def evaluation_differences(request: StudyRequest, evaluation: dict[str, Any] | None,
                           split_size: int) -> list[str]:
  """How a run's study evaluation differs from the requested one (empty: it is current)."""
  if evaluation is None:
    return ["none yet"]
  differences = []
  cascade = attack_specs.parse(request.cascade).name
  if evaluation_cascade(evaluation)[0] != cascade:
    differences.append(f"--cascade ({evaluation_cascade(evaluation)[0]} -> {cascade})")
  members = attack_specs.parse(cascade).members
  for flag, used in (("apgd_steps", "apgd-ce" in members or "apgd-t" in members),
                     ("fab_steps", "fab-t" in members), ("square_queries", "square" in members)):
    if used and evaluation.get(flag) != getattr(request, flag):
      differences.append(f"--{flag} ({evaluation.get(flag)} -> {getattr(request, flag)})")
  if evaluation["num_examples"] != min(request.autoattack_examples, split_size):
    differences.append(f"--autoattack_examples ({evaluation['num_examples']} -> "
                       f"{request.autoattack_examples})")
  return differences


def check_recipe(request: StudyRequest, key: RunKey, *, steps_per_epoch: int) -> None:
  """Refuses a run in the study's workdir that was trained with another recipe than the one
  requested: the table would label its numbers with the new one. (Other evaluation settings
  are not refused: the run is evaluated again.)"""
  run_dir = key.directory(epath.Path(request.workdir))
  expected = run_config(request.config, key, steps_per_epoch=steps_per_epoch,
                        curve_examples=request.curve_examples)
  differences = [f"{field} ({saved!r} -> {new!r})" for field, (saved, new) in
                 workdir_lib.result_differences(str(run_dir), expected).items()]
  if differences:
    raise StudyError(f"{run_dir} holds a run of another recipe: {', '.join(differences)}; "
                     "its numbers would be reported as the new recipe's, so nothing was run: "
                     "give this recipe another --workdir (and --output_dir)")


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _curve(results: dict[str, Any], model: str) -> list[dict[str, float]]:
  """The run's learning curve for `model`: clean and PGD-20 after each epoch, on its subset."""
  return [{"epoch": e["epoch"], "num_examples": e["num_examples"],
           "clean": e["accuracy"][model]["clean"],
           "pgd20": e["accuracy"][model][f"pgd{STUDY_PGD_STEPS}"]}
          for e in results.get("evaluations", []) if e.get("kind") == "periodic"]


def _machines(results: dict[str, Any]) -> list[str]:
  """The machines that trained a run, one `provenance.machine_summary` line each: a table may
  join runs trained elsewhere (a GPU's budget beside a CPU's), and a resumed run may have
  changed machine."""
  return sorted({provenance.machine_summary(record)
                 for record in results.get("provenance", [])})


def _rows(key: RunKey, results: dict[str, Any], record: dict[str, Any],
          run_dir: epath.Path) -> list[dict[str, Any]]:
  """One row per model of a finished run."""
  final, evaluation = results["final"], record["evaluation"]
  cascade, cascade_key = evaluation_cascade(evaluation)
  trained_on = _machines(results)
  rows = []
  for model in methods.get(key.method).model_names:
    accuracy = evaluation["accuracy"][model]
    rows.append({"method": key.method, "model": model, "epochs": key.epochs, "seed": key.seed,
                 "clean": final["accuracy"][model]["clean"],
                 "pgd20": final["accuracy"][model][f"pgd{STUDY_PGD_STEPS}"],
                 "autoattack": accuracy[cascade_key], "cascade": cascade,
                 "worst_case": accuracy["worst_case"],
                 "clean_examples": final["num_examples"],
                 "autoattack_examples": evaluation["num_examples"],
                 "train_seconds": record.get("train_seconds"),
                 "eval_seconds": record.get("eval_seconds"), "workdir": str(run_dir),
                 "trained_on": trained_on, "curve": _curve(results, model)})
  return rows


def _finished(run_dir: epath.Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
  """(results.json, study_run.json) of a run; finished when both hold their final parts."""
  results, record = run_dir / "results.json", run_dir / RUN_RECORD
  return (reporting.read_json(results) if results.exists() else None,
          reporting.read_json(record) if record.exists() else {})


def _is_trained(results: dict[str, Any] | None) -> bool:
  return results is not None and "final" in results


def _write_report(request: StudyRequest, rows: list[dict[str, Any]], missing: list[RunKey],
                  study_record: dict[str, Any], started: float,
                  split_size: int | None = None) -> dict[str, Any]:
  """study.json, study.csv, study.md, study.png and curves.png over the finished runs.

  `study_record` is the invocation's `provenance.record`; `commit` and `machine` are its short
  forms for people, naming where this invocation ran; each run's own records, and so the
  machines that trained it, are in its results.json (`trained_on` in each row).
  """
  commit = study_record["git_commit"]
  summary = report.summarise(rows)
  study = {"meta": {"command": request.command, "methods": list(request.methods),
                    "epochs": list(request.budgets), "seeds": list(request.seeds),
                    "config": request.config.to_dict(),
                    "autoattack_examples": request.autoattack_examples,
                    "apgd_steps": request.apgd_steps, "fab_steps": request.fab_steps,
                    "square_queries": request.square_queries, "cascade": request.cascade,
                    "curve_examples": request.curve_examples,
                    "complete": not missing,
                    "missing_runs": [dataclasses.asdict(key) for key in missing],
                    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
                    "machine": provenance.machine_summary(study_record),
                    "commit": commit[:7] if commit else None, "provenance": study_record,
                    "wall_seconds_this_invocation": time.time() - started},
           "summary": summary, "runs": rows}
  if jax.process_index() != 0 or not rows:
    return study
  output_dir = epath.Path(request.output_dir or request.workdir)
  output_dir.mkdir(parents=True, exist_ok=True)
  table = report.markdown_table(summary, eps=request.config.eval.eps,
                                autoattack_examples=rows[0]["autoattack_examples"],
                                clean_examples=rows[0]["clean_examples"], missing=len(missing),
                                split_examples=split_size, split=request.config.eval.split)
  reporting.write_json(output_dir / "study.json", study)
  report.write_csv(rows, output_dir / "study.csv")
  (output_dir / "study.md").write_text(table + "\n")
  report.plot_tradeoff(rows, summary, output_dir / "study.png", eps=request.config.eval.eps)
  report.plot_curves(rows, output_dir / "curves.png", eps=request.config.eval.eps)
  return study


@dataclasses.dataclass
class TimeLeft:
  """The study's ETA, from what this invocation's runs took.

  Training time is counted per unit of work (the method's forward passes per step, times the
  epochs still to train) and evaluation time per model evaluated, apart: a short run's time is
  mostly its evaluation, which does not grow with the budget, so one rate for both, taken from
  short runs, overstated the time of longer ones. Only the runs still to train or evaluate
  count, a resumed one for the steps it has left.
  """
  train_seconds: float = 0.0
  train_work: float = 0.0
  eval_seconds: float = 0.0
  models_evaluated: int = 0

  def add(self, *, train_seconds: float | None, work: float, eval_seconds: float,
          models: int) -> None:
    """Records a run just done: its training (None: it trained before) and its evaluation."""
    if train_seconds is not None and work > 0:
      self.train_seconds += train_seconds
      self.train_work += work
    self.eval_seconds += eval_seconds
    self.models_evaluated += models

  def describe(self, left: list[tuple[float, int]]) -> str:
    """", ETA 2m20s for 1 run left to train and 1 to evaluate", for the runs `left`, each as
    (training work left, models to evaluate); "" until the runs done tell the rates needed."""
    work, models = sum(w for w, _ in left), sum(m for _, m in left)
    if not left or not self.models_evaluated or (work and not self.train_work):
      return ""
    seconds = ((work * self.train_seconds / self.train_work if work else 0.0)
               + models * self.eval_seconds / self.models_evaluated)
    to_train = sum(1 for w, _ in left if w > 0)
    to_evaluate = len(left) - to_train
    plural = lambda count: "s" if count > 1 else ""
    runs = (f"{to_train} run{plural(to_train)} left to train"
            + (f" and {to_evaluate} to evaluate" if to_evaluate else "") if to_train
            else f"{to_evaluate} run{plural(to_evaluate)} left to evaluate")
    return f", ETA {_format_seconds(seconds)} for {runs}"


def run_study(request: StudyRequest) -> dict[str, Any]:
  """Trains and evaluates every run of the grid (none with `report_only`); returns the study.

  Raises `interruption.Interrupted` when SIGINT or SIGTERM stops it, in any phase.
  """
  check(request)
  workdir = epath.Path(request.workdir)
  runs = grid(request)
  steps_per_epoch = pipeline.steps_per_epoch(request.config) if request.curve_examples else 0
  def work_left(key: RunKey) -> float:
    """The run's training work still to do, for the ETA: its method's work per step (forward
    passes) times its epochs, times the part of its steps not trained yet."""
    results = finished[key][0]
    if _is_trained(results):
      return 0.0
    log, total = (results or {}).get("train_log"), (results or {}).get("total_steps")
    done = log[-1]["step"] / total if log and total else 0.0
    return (methods.get(key.method).forward_passes(request.config.attack.num_steps)
            * key.epochs * (1.0 - done))

  is_chief = jax.process_index() == 0
  # The code this invocation runs, whatever the checkout becomes meanwhile.
  study_record = provenance.record(request.command or None)
  start, time_left = time.time(), TimeLeft()
  finished = {key: _finished(key.directory(workdir)) for key in runs}
  for key, (results, _) in finished.items():  # before anything trains
    if results is not None:
      check_recipe(request, key, steps_per_epoch=steps_per_epoch)
  split_size = evaluation_split_size(request.config)
  stale = {key: evaluation_differences(request, record.get("evaluation"), split_size)
           for key, (results, record) in finished.items()}
  is_done = lambda key: _is_trained(finished[key][0]) and not stale[key]
  pending = [key for key in runs if not is_done(key)]
  rows, missing = [], []
  for number, key in enumerate(runs, start=1):
    run_dir = key.directory(workdir)
    results, record = finished[key]
    done = is_done(key)
    eta = time_left.describe([(work_left(k), len(methods.get(k.method).model_names))
                              for k in pending])
    evaluated = "evaluation" in record
    if done:
      status = "finished, skipped"
    elif request.report_only:
      status = ("reported with its earlier evaluation (" + ", ".join(stale[key]) + ")"
                if _is_trained(results) and evaluated else "not finished, left for later")
    elif _is_trained(results):
      status = ("evaluating again (" + ", ".join(stale[key]) + ")" if evaluated
                else "trained; evaluating")
    else:
      status = "training and evaluating"
    if is_chief:
      print(f"[run {number}/{len(runs)}] {key.describe()}: {status} "
            f"({_format_seconds(time.time() - start)} elapsed{eta})", flush=True)
    if not done and request.report_only:
      if _is_trained(results) and evaluated:
        rows.extend(_rows(key, results, record, run_dir))
      else:
        missing.append(key)
      continue
    if not done:
      trains, work = not _is_trained(results), work_left(key)
      with workdir_lock.held(str(run_dir)):  # over its training and its evaluation
        results, record = _train_and_evaluate(request, key, run_dir, results, record,
                                              steps_per_epoch)
      time_left.add(train_seconds=record["train_seconds"] if trains else None, work=work,
                    eval_seconds=record["eval_seconds"],
                    models=len(methods.get(key.method).model_names))
      pending.remove(key)
    rows.extend(_rows(key, results, record, run_dir))
    if not done:  # the tables so far, marked partial, in case the study stops here
      _write_report(request, rows, runs[number:], study_record, start, split_size)
  study = _write_report(request, rows, missing, study_record, start, split_size)
  if is_chief and rows:
    print("\n" + (epath.Path(request.output_dir or request.workdir) / "study.md").read_text(),
          flush=True)
    print(f"wrote study.json, study.csv, study.md, study.png and curves.png to "
          f"{request.output_dir or request.workdir}", file=sys.stderr, flush=True)
  return study


def _train_and_evaluate(request: StudyRequest, key: RunKey, run_dir: epath.Path,
                        results: dict[str, Any] | None, record: dict[str, Any],
                        steps_per_epoch: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains the run (or resumes it) and evaluates it; (results.json, study_run.json)."""
  if results is None or "final" not in results:
    began = time.time()
    results = train.train_and_evaluate(
        run_config(request.config, key, steps_per_epoch=steps_per_epoch,
                   curve_examples=request.curve_examples), str(run_dir))
    if "final" not in results:
      raise interruption.Interrupted(
          f"the training of {key.describe()} stopped at its newest checkpoint in {run_dir}; "
          "run the same command again to resume")
    record["train_seconds"] = time.time() - began
  began = time.time()
  with interruption.raising_on_signals(f"the evaluation of {key.describe()}",
                                       "its training is saved, the evaluation was not"):
    evaluation = autoattack_evaluation(str(run_dir), request)
  if "evaluation" in record:  # an earlier evaluation with other settings is kept, not lost
    record.setdefault("earlier_evaluations", []).append(record["evaluation"])
  record["evaluation"] = evaluation
  record["eval_seconds"] = time.time() - began
  if jax.process_index() == 0:
    reporting.write_json(run_dir / RUN_RECORD, record)
  return results, record


def parse_list(text: str, kind: type, flag: str) -> tuple[Any, ...]:
  try:
    return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
  except ValueError:
    raise StudyError(f"{flag}={text}: a comma-separated list of {kind.__name__}s") from None
