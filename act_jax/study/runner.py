"""Runs a study: every method x seed trained on one recipe, then evaluated by the one evaluator.

Every run gets the same model, epochs, optimiser and attack budget: only `config.method` and
`config.seed` differ. Run (method, seed) trains in WORKDIR/<method>/seed<seed>, so a finished
run is skipped and an interrupted one resumes from its checkpoints when the study is run again.
Clean and PGD-20 accuracy come from each run's final evaluation on the whole test split; the
study adds AutoAttack's APGD-CE and APGD-T on the first `autoattack_examples` test examples,
cascaded as AutoAttack does (each attack only on the examples still robust).
"""

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from act_jax import api, methods, parallel, reporting, train
from act_jax.attacks import specs as attack_specs
from act_jax.data import pipeline
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
  autoattack_examples: int = 1000
  apgd_steps: int = attack_specs.APGD_STEPS
  output_dir: str | None = None
  command: str = ""


def check(request: StudyRequest) -> None:
  unknown = [m for m in request.methods if m not in methods.METHOD_NAMES]
  if unknown or not request.methods:
    raise StudyError(f"--methods={','.join(request.methods)}: allowed: "
                     f"{', '.join(methods.METHOD_NAMES)}")
  if not request.seeds or len(set(request.seeds)) != len(request.seeds):
    raise StudyError(f"--seeds={','.join(map(str, request.seeds))}: give distinct integers")
  if request.config.eval.num_steps != STUDY_PGD_STEPS:
    raise StudyError(f"config.eval.num_steps = {request.config.eval.num_steps}: the study "
                     f"reports PGD-{STUDY_PGD_STEPS}")
  for flag, value in (("--autoattack-examples", request.autoattack_examples),
                      ("--apgd-steps", request.apgd_steps)):
    if value < 1:
      raise StudyError(f"{flag}={value}: must be >= 1")


def run_config(base: ml_collections.ConfigDict, method: str,
               seed: int) -> ml_collections.ConfigDict:
  """The recipe with this run's method and seed: nothing else differs between runs."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.method, config.seed = method, seed
  return config


def _read_json(path: epath.Path) -> dict[str, Any] | None:
  return json.loads(path.read_text()) if path.exists() else None


def autoattack_evaluation(run_dir: str, num_examples: int, apgd_steps: int) -> dict[str, Any]:
  """Clean, PGD-20 and AutoAttack (APGD-CE + APGD-T, cascaded) on the first test examples."""
  mesh = parallel.make_mesh()
  run = api.load_run(run_dir, devices=list(mesh.devices.flat))
  settings = dataclasses.replace(
      evaluator_lib.training_settings(run.config.eval,
                                      unroll=parallel.unrolls_attack_loops(mesh)),
      apgd_steps=apgd_steps)
  evaluator = evaluator_lib.Evaluator(eval_mode_apply(run.model.apply), mesh,
                                      attack_specs.parse_names("pgd20,autoattack"), settings)
  data = pipeline.eval_data(run.config, split="test", num_examples=num_examples)
  result = evaluator({name: state.variables for name, state in run.models.items()}, data,
                     jax.random.PRNGKey(0))
  return {"checkpoint_step": run.step, "num_examples": result.num_examples,
          "apgd_steps": apgd_steps, "accuracy": result.accuracy,
          "examples_attacked": result.attacked, "attacks": evaluator.describe()}


def _format_seconds(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _commit() -> str | None:
  """The git commit the study ran from, where it runs from a clone."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _machine() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or "CPU"
  device = jax.devices()[0]
  where = model if device.platform == "cpu" else device.device_kind
  return f"{where}; {len(os.sched_getaffinity(0))} cores; {jax.device_count()} JAX device(s)"


def run_study(request: StudyRequest) -> dict[str, Any] | None:
  """Trains and evaluates every run; returns the study, or None if a run was interrupted."""
  check(request)
  workdir = epath.Path(request.workdir)
  output_dir = epath.Path(request.output_dir or request.workdir)
  runs = [(method, seed) for method in request.methods for seed in request.seeds]
  # Relative cost of each run for the ETA: its method's work per step (forward passes).
  cost = {method: methods.get(method).forward_passes(request.config.attack.num_steps)
          for method in request.methods}
  is_chief = jax.process_index() == 0
  commit = _commit()  # the code this invocation runs, whatever the checkout becomes meanwhile
  start, worked_seconds, worked_cost = time.time(), 0.0, 0
  rows = []
  for number, (method, seed) in enumerate(runs, start=1):
    run_dir = workdir / method / f"seed{seed}"
    record_path = run_dir / RUN_RECORD
    record = _read_json(record_path) or {}
    results = _read_json(run_dir / "results.json")
    done = results is not None and "final" in results and "evaluation" in record
    remaining = sum(cost[m] for m, _ in runs[number - 1:])
    eta = (f", ETA {_format_seconds(remaining * worked_seconds / worked_cost)}" if worked_cost
           else "")
    if is_chief:
      print(f"[run {number}/{len(runs)}] {method} seed {seed}: "
            f"{'finished, skipped' if done else 'training and evaluating'} "
            f"({_format_seconds(time.time() - start)} elapsed{eta})", flush=True)
    if not done:
      began = time.time()
      if results is None or "final" not in results:
        results = train.train_and_evaluate(run_config(request.config, method, seed),
                                           str(run_dir))
        if "final" not in results:
          if is_chief:
            print(f"Interrupted in {run_dir}; run the study again to resume.", flush=True)
          return None
        record["train_seconds"] = time.time() - began
      evaluated = time.time()
      record["evaluation"] = autoattack_evaluation(str(run_dir), request.autoattack_examples,
                                                   request.apgd_steps)
      record["eval_seconds"] = time.time() - evaluated
      if is_chief:
        reporting.write_json(record_path, record)
      worked_seconds += time.time() - began
      worked_cost += cost[method]
    final, evaluation = results["final"], record["evaluation"]
    for model in methods.get(method).model_names:
      accuracy = evaluation["accuracy"][model]
      rows.append({"method": method, "model": model, "seed": seed,
                   "clean": final["accuracy"][model]["clean"],
                   "pgd20": final["accuracy"][model][f"pgd{STUDY_PGD_STEPS}"],
                   "autoattack": accuracy["autoattack"], "worst_case": accuracy["worst_case"],
                   "clean_examples": final["num_examples"],
                   "autoattack_examples": evaluation["num_examples"],
                   "train_seconds": record.get("train_seconds"),
                   "eval_seconds": record.get("eval_seconds"), "workdir": str(run_dir)})
  summary = report.summarise(rows)
  study = {"meta": {"command": request.command, "methods": list(request.methods),
                    "seeds": list(request.seeds), "config": request.config.to_dict(),
                    "autoattack_examples": request.autoattack_examples,
                    "apgd_steps": request.apgd_steps,
                    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
                    "machine": _machine(), "commit": commit,
                    "versions": {"jax": jax.__version__, "python": platform.python_version()},
                    "wall_seconds_this_invocation": time.time() - start},
           "summary": summary, "runs": rows}
  if is_chief:
    output_dir.mkdir(parents=True, exist_ok=True)
    table = report.markdown_table(summary, eps=request.config.eval.eps,
                                  autoattack_examples=rows[0]["autoattack_examples"],
                                  clean_examples=rows[0]["clean_examples"])
    reporting.write_json(output_dir / "study.json", study)
    report.write_csv(rows, output_dir / "study.csv")
    (output_dir / "study.md").write_text(table + "\n")
    report.plot_tradeoff(rows, summary, output_dir / "study.png", eps=request.config.eval.eps)
    print("\n" + table, flush=True)
    print(f"\nwrote study.json, study.csv, study.md and study.png to {output_dir}",
          file=sys.stderr, flush=True)
  return study


def parse_list(text: str, kind: type, flag: str) -> tuple[Any, ...]:
  try:
    return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
  except ValueError:
    raise StudyError(f"{flag}={text}: a comma-separated list of {kind.__name__}s") from None
