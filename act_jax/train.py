"""The training loop: build everything from the config, resume, step, evaluate, checkpoint, report.

The loop is the same for every method and deliberately boring; the science lives in
`methods` (the per-device steps), `attacks` and `losses`.
"""

import functools
import json
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
from act_jax.attacks import specs as attack_specs
from act_jax.data import datasets, pipeline
from act_jax.evaluate import evaluator as evaluator_lib
from act_jax.evaluate import report
from act_jax.study import report as study_report
from act_jax.train_state import eval_mode_apply


class _PreemptionFlag:
  """Set by SIGTERM (what cluster schedulers and TPU maintenance send before killing a job).

  Only for single-process runs. With several processes, JAX's preemption service catches the
  signal and `CheckpointManager.reached_preemption` lets all processes agree on the step at
  which to stop; a flag raised in one process only would leave the others waiting.
  """

  def __init__(self, install: bool):
    self.raised = False
    self._previous = signal.signal(signal.SIGTERM, self._handle) if install else None

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _prepare_dataset_chief_first(dataset_config: ml_collections.ConfigDict,
                                 is_chief: bool) -> datasets.DatasetInfo:
  """Dataset metadata, preparing the dataset if needed: process 0 first, then the others.

  Processes that share `data_dir` (a bucket, or one machine's disk) then find a TFDS dataset
  (or CIFAR's array cache) prepared instead of racing to write it; processes on other hosts
  with a local `data_dir` prepare their own copy.
  """
  info = datasets.dataset_info(dataset_config) if is_chief else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("act_jax: dataset prepared by process 0")
  return info if is_chief else datasets.dataset_info(dataset_config)


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  fetched = parallel.fetch_replicated(history)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _read_json(path: epath.Path) -> dict[str, Any]:
  return json.loads(path.read_text())


def _record(results: dict[str, Any], result: dict[str, Any], writer: reporting.ScalarWriter,
            progress: reporting.Progress, results_path: epath.Path, is_chief: bool) -> None:
  """Appends one evaluation to the results, TensorBoard and results.json (kept current on disk)."""
  results["evaluations"].append(result)
  writer.write(result["step"], {f"eval/{model}/{name}_accuracy": value
                                for model, by_name in result["accuracy"].items()
                                for name, value in by_name.items()})
  progress.write(f"step {result['step']}: " + ", ".join(
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
  workdir_path = epath.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  if is_chief:
    (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2))

  info = _prepare_dataset_chief_first(config.dataset, is_chief)
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
  restored = checkpointing.restore_latest(manager, state, train_rng)
  if restored is not None:
    state, train_rng, position = restored
    if is_chief:
      print(f"Resuming from step {position.step} in {workdir}", flush=True)

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
  eval_data = pipeline.eval_data(config, split=config.eval.split,
                                 num_examples=config.eval.num_examples)

  def run_evaluation(step: int) -> dict[str, Any]:
    variables = {name: model_state.variables
                 for name, model_state in method.models(state).items()}
    result = evaluator(variables, eval_data, jax.random.fold_in(eval_rng, step))
    return {"step": step, "split": config.eval.split, "num_examples": result.num_examples,
            "accuracy": result.accuracy}

  results_path = workdir_path / "results.json"
  results = {"config": config.to_dict(), "total_steps": total_steps, "evaluations": [],
             "train_log": []}
  if results_path.exists():  # keep what the interrupted run reported up to its checkpoint
    previous = _read_json(results_path)
    for key in ("evaluations", "train_log"):
      results[key] = [entry for entry in previous[key] if entry["step"] <= position.step]

  progress = reporting.Progress(total_steps=total_steps, start_step=position.step,
                                global_batch_size=config.train.batch_size, enabled=is_chief)
  writer = reporting.ScalarWriter(workdir, enabled=is_chief)
  preemption = _PreemptionFlag(install=jax.process_count() == 1)
  history = []
  step = run_start_step = position.step
  try:
    while step < total_steps:
      state, metrics = compiled_step(state, step, train_rng)
      step += 1
      history.append(metrics)
      if step % config.train.log_every_steps == 0 or step == total_steps:
        scalars = _mean_metrics(history)
        history = []
        scalars["images_per_second"] = progress.update(step, scalars)
        writer.write(step, scalars)
        results["train_log"].append({"step": step, **scalars})
      position = checkpointing.TrainingPosition(step=step, batches_consumed=step)
      interrupted = (preemption.raised or manager.reached_preemption(step)
                     or (interrupt_after_steps is not None
                         and step - run_start_step >= interrupt_after_steps))
      if step % config.train.checkpoint_every_steps == 0 or interrupted or step == total_steps:
        checkpointing.save(manager, state, train_rng, position)
      if interrupted:
        if is_chief:
          reporting.write_json(results_path, results)
        progress.write(f"Stopped at step {step}; resume by running the same command again.")
        return results
      if config.train.eval_every_steps and step % config.train.eval_every_steps == 0 \
          and step != total_steps:
        _record(results, run_evaluation(step), writer, progress, results_path, is_chief)
        progress.reset_clock()
    final = run_evaluation(step)
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
