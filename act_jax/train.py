"""The training loop: build everything from the config, resume, step, evaluate, checkpoint, report.

The loop is the same for every method and deliberately boring; the science lives in
`methods` (the per-device steps), `attacks` and `losses`.
"""

import functools
import json
import math
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from act_jax import (
  checkpointing,
  config_validation,
  methods,
  models,
  optimizers,
  parallel,
  reporting,
)
from act_jax import workdir as workdir_lib
from act_jax.attacks import specs as attack_specs
from act_jax.data import datasets, pipeline
from act_jax.errors import UserError
from act_jax.evaluate import evaluator as evaluator_lib
from act_jax.evaluate import report
from act_jax.study import report as study_report
from act_jax.train_state import eval_mode_apply


class _PreemptionFlag:
  """Set by SIGTERM (what schedulers and TPU maintenance send before killing a job) or by a
  first Ctrl-C (SIGINT): the loop then saves a checkpoint and returns. A second Ctrl-C
  interrupts at once.

  Only for single-process runs. With several processes, JAX's preemption service catches the
  signal and `CheckpointManager.reached_preemption` lets all processes agree on the step at
  which to stop; a flag raised in one process only would leave the others waiting.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, install: bool):
    self.raised = False
    self._previous = ({number: signal.signal(number, self._handle) for number in self.SIGNALS}
                      if install else {})

  def _handle(self, signum, frame):
    del frame
    self.raised = True
    if signum == signal.SIGINT:  # the next Ctrl-C is an ordinary KeyboardInterrupt
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def restore(self):
    for number, handler in self._previous.items():
      signal.signal(number, handler)


def _prepare_dataset_chief_first(dataset_config: ml_collections.ConfigDict,
                                 is_chief: bool) -> datasets.DatasetInfo:
  """Dataset metadata, writing CIFAR's array cache if needed: process 0 first, then the others.

  Processes that share `data_dir` (a bucket, or one machine's disk) then find the cache written
  instead of racing to write it; processes on other hosts with a local `data_dir` write their
  own copy. A TFDS dataset is never downloaded or built here (`act_jax.prepare_data` does it).
  """
  datasets.check_available(dataset_config)  # every process: all stop at once if it is missing
  info = datasets.dataset_info(dataset_config) if is_chief else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("act_jax: dataset prepared by process 0")
  return info if is_chief else datasets.dataset_info(dataset_config)


class NonFiniteError(UserError):
  """A loss or gradient became NaN or infinite: the run stopped before saving that state."""
  exit_code = 3


def _first_non_finite(steps: list[tuple[int, dict[str, float]]]) -> tuple[int, str] | None:
  """(step, what) of the first step whose losses or gradients are not all finite."""
  for step, metrics in steps:
    for name, value in metrics.items():
      if name.endswith("/grads_finite") and value < 1.0:
        return step, f"{name.split('/')[0]} model's gradients"
      if not math.isfinite(value):
        model, _, term = name.partition("/")
        return step, f"{model} model's {term or model} ({value})"
  return None


def _mean_metrics(steps: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
  return {k: float(np.mean([m[k] for _, m in steps])) for k in steps[0][1]}


def _read_json(path: epath.Path) -> dict[str, Any]:
  return json.loads(path.read_text())


def _record(results: dict[str, Any], result: dict[str, Any], writer: reporting.ScalarWriter,
            progress: reporting.Progress, results_path: epath.Path, is_chief: bool) -> None:
  """Appends one evaluation to the results, TensorBoard and results.json (kept current on disk)."""
  results["evaluations"].append(result)
  writer.write(result["step"], {f"{result['kind']}_eval/{model}/{name}_accuracy": value
                                for model, by_name in result["accuracy"].items()
                                for name, value in by_name.items()})
  progress.write(f"step {result['step']} ({result['num_examples']} examples): " + ", ".join(
      f"{model} " + " ".join(f"{report.column_title(name)} {100 * value:.2f}%"
                             for name, value in by_name.items())
      for model, by_name in result["accuracy"].items()))
  if is_chief:
    reporting.write_json(results_path, results)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       interrupt_after_steps: int | None = None) -> dict[str, Any]:
  """Trains `config.method` as `config` says, resuming from the newest checkpoint in `workdir`.

  `interrupt_after_steps` stops this run after that many steps as a preemption would (checkpoint,
  then return without the final evaluation); it exists so that resumption can be tested.
  Returns the results that are also written to `workdir/results.json`.
  """
  mesh = parallel.make_mesh()
  config_validation.validate_config(config, num_devices=mesh.size,
                                    num_processes=jax.process_count())
  method = methods.get(config.method)
  is_chief = jax.process_index() == 0
  # Everything that can refuse the run does so before the workdir changes.
  workdir_lib.check_usable(workdir)
  config_changes = workdir_lib.config_changes(workdir, config)
  info = _prepare_dataset_chief_first(config.dataset, is_chief)
  workdir_path = workdir_lib.create(workdir, config) if is_chief else epath.Path(workdir)
  train_data = pipeline.train_data(config, mesh)
  steps_per_epoch = train_data.steps_per_epoch
  total_steps = config.train.max_steps or config.train.epochs * steps_per_epoch

  # Over one device, synchronised BN is plain BN: skip its collectives (costly on XLA:CPU).
  sync_batch_norm = config.model.sync_batch_norm and mesh.size > 1
  bn_axis_name = parallel.DATA_AXIS if sync_batch_norm else None
  model = models.from_config(config, info.num_classes, bn_axis_name=bn_axis_name)
  tx = optimizers.sgd_with_coupled_weight_decay(config.optim, steps_per_epoch,
                                                global_batch_size=config.train.batch_size,
                                                total_steps=total_steps)
  root_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng, eval_rng = jax.random.split(root_rng, 3)
  state = jax.jit(functools.partial(method.create_state, model, tx, image_shape=info.image_shape),
                  out_shardings=jax.sharding.NamedSharding(mesh, parallel.REPLICATED))(init_rng)
  train_rng = parallel.replicate(train_rng, mesh)

  manager = checkpointing.checkpoint_manager(workdir, config.train.max_checkpoints_to_keep)
  position = checkpointing.TrainingPosition(step=0, batches_consumed=0)
  restored = checkpointing.restore_latest(manager, state, train_rng,
                                          move_unrestorable=is_chief)
  if restored is not None:
    state, train_rng, position = restored
    if is_chief:
      print(f"Resuming from step {position.step} in {workdir}", flush=True)

  # One program copies a whole state for a pending checkpoint. It reads the state after the step
  # that made it and before the next step, which is donated that state, so it never runs beside
  # a step's collectives.
  copy_state = parallel.device_copier(state)
  schedule = optimizers.learning_rate_schedule(config.optim, steps_per_epoch,
                                               global_batch_size=config.train.batch_size,
                                               total_steps=total_steps)
  unroll = parallel.unrolls_attack_loops(mesh)
  compiled_step = train_data.bind(functools.partial(
      method.train_step, hp=method.hyperparams(config, unroll_attack=unroll),
      learning_rate_fn=schedule))
  evaluator = evaluator_lib.Evaluator(
      eval_mode_apply(model.apply), mesh, [attack_specs.parse(f"pgd{config.eval.num_steps}")],
      evaluator_lib.training_settings(config.eval, unroll=unroll))
  final_data = pipeline.eval_data(config, split=config.eval.split,
                                  num_examples=config.eval.num_examples)
  # The periodic evaluations (the learning curve) may use fewer examples than the final one.
  periodic_examples = config.eval.periodic_num_examples or config.eval.num_examples
  periodic_data = (final_data if periodic_examples == config.eval.num_examples else
                   pipeline.eval_data(config, split=config.eval.split,
                                      num_examples=periodic_examples))

  def run_evaluation(step: int, kind: str) -> dict[str, Any]:
    variables = {name: model_state.variables
                 for name, model_state in method.models(state).items()}
    data = final_data if kind == "final" else periodic_data
    result = evaluator(variables, data, jax.random.fold_in(eval_rng, step))
    return {"step": step, "epoch": step / steps_per_epoch, "kind": kind,
            "split": config.eval.split, "num_examples": result.num_examples,
            "accuracy": result.accuracy}

  results_path = workdir_path / "results.json"
  results = {"config": config.to_dict(), "total_steps": total_steps, "evaluations": [],
             "train_log": []}
  if results_path.exists():  # keep what the interrupted run reported up to its checkpoint
    previous = _read_json(results_path)
    for key in ("evaluations", "train_log", "config_changes"):
      results[key] = [entry for entry in previous.get(key, []) if entry["step"] <= position.step]
  if config_changes:
    results.setdefault("config_changes", []).append({"step": position.step,
                                                     "changes": config_changes})
    if is_chief:
      print("Continuing with changed settings: " + ", ".join(
          f"{field} {old!r} -> {new!r}" for field, (old, new) in config_changes.items()),
            flush=True)

  progress = reporting.Progress(total_steps=total_steps, start_step=position.step,
                                global_batch_size=config.train.batch_size, enabled=is_chief)
  writer = reporting.ScalarWriter(workdir, enabled=is_chief)
  preemption = _PreemptionFlag(install=jax.process_count() == 1)
  unchecked, checked = [], []  # per-step metrics: still on the devices / fetched and finite
  # A scheduled checkpoint waits one step: the state is saved only once the next step's losses,
  # computed from it, are known to be finite (a diverging update can leave finite weights that
  # only the next forward pass turns into NaN).
  pending: tuple[checkpointing.TrainingPosition, Any] | None = None
  step = run_start_step = position.step

  def save(position: checkpointing.TrainingPosition, saved_state: Any) -> None:
    checkpointing.save(manager, saved_state, train_rng, position)
    if is_chief:  # the log to this step, so a killed run keeps it up to its checkpoint
      reporting.write_json(results_path, results)

  def check_finite() -> None:
    """Fetches the metrics of the steps since the last check (the only host sync) and stops
    the run at the first non-finite loss or gradient, before anything saves that state."""
    fetched = parallel.fetch_replicated([metrics for _, metrics in unchecked])
    steps = [(s, {k: float(v) for k, v in m.items()})
             for (s, _), m in zip(unchecked, fetched, strict=True)]
    unchecked.clear()
    bad = _first_non_finite(steps)
    if bad is not None:
      bad_step, what = bad
      latest = manager.latest_step()
      message = (f"step {bad_step}: the {what} is not finite; stopped without saving it "
                 f"(newest checkpoint: {'none' if latest is None else f'step {latest}'}). "
                 "Lower optim.learning_rate, or check the data.")
      results["stopped"] = {"step": bad_step, "reason": message}
      if is_chief:
        reporting.write_json(results_path, results)
      raise NonFiniteError(message)
    checked.extend(steps)

  try:
    while step < total_steps:
      state, metrics = compiled_step(state, step, train_rng)
      step += 1
      unchecked.append((step, metrics))
      interrupted = (preemption.raised or manager.reached_preemption(step)
                     or (interrupt_after_steps is not None
                         and step - run_start_step >= interrupt_after_steps))
      log = step % config.train.log_every_steps == 0 or step == total_steps
      last = interrupted or step == total_steps
      scheduled = step % config.train.checkpoint_every_steps == 0
      # The last step's periodic evaluation is the final one, unless that one uses other
      # examples: then the curve gets its own last point.
      evaluate = (config.train.eval_every_steps and step % config.train.eval_every_steps == 0
                  and (step != total_steps or periodic_data is not final_data))
      if log or scheduled or last or evaluate or pending:
        check_finite()
      if pending:
        save(*pending)
        pending = None
      if log:
        scalars = {k: v for k, v in _mean_metrics(checked).items()
                   if not k.endswith("/grads_finite")}
        checked.clear()
        scalars["images_per_second"] = progress.update(step, scalars)
        writer.write(step, scalars)
        results["train_log"].append({"step": step, **scalars})
      position = checkpointing.TrainingPosition(step=step, batches_consumed=step)
      if last:  # no next step to wait for
        save(position, state)
      elif scheduled:  # a copy: the next step is handed (donated) this state's buffers
        pending = (position, copy_state(state))
      if interrupted:
        progress.write(f"Stopped at step {step}; resume by running the same command again.")
        return results
      if evaluate:
        _record(results, run_evaluation(step, "periodic"), writer, progress, results_path,
                is_chief)
        progress.reset_clock()
    final = run_evaluation(step, "final")
    _record(results, final, writer, progress, results_path, is_chief)
    results["final"] = final
    progress.close()
    if is_chief:
      reporting.write_json(results_path, results)
      print("\n" + report.accuracy_table(final["accuracy"], eps=config.eval.eps), flush=True)
      for line in study_report.comparison_lines(config.reference_study, config):
        print(line, flush=True)
    return results
  finally:
    manager.wait_until_finished()
    preemption.restore()
    progress.close()
    writer.close()
