"""The training loop: resume, step, evaluate, checkpoint, report.

The loop is the same for every method and deliberately boring: `experiment` builds what a run
computes with, `methods` hold the per-device steps, and the helpers below each keep one piece
of the loop's state (which metrics are checked, which checkpoint waits, what was reported).
"""

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from act_jax import (
  checkpointing,
  config_validation,
  experiment,
  interruption,
  parallel,
  provenance,
  reporting,
  workdir_lock,
  write_failures,
)
from act_jax import workdir as workdir_lib
from act_jax.attacks import specs as attack_specs
from act_jax.data import catalog, datasets, pipeline
from act_jax.errors import UserError
from act_jax.evaluate import evaluator as evaluator_lib
from act_jax.evaluate import report


class NonFiniteError(UserError):
  """A loss or gradient became NaN or infinite: the run stopped before saving that state."""
  exit_code = 3


def every(step: int, period: int) -> bool:
  """Whether a periodic action with `period` steps (0: never) is due after `step` steps."""
  return period > 0 and step % period == 0


class Preemption:
  """Whether the run should stop now: saving a checkpoint and returning.

  In a single process, SIGTERM (what schedulers and TPU maintenance send before killing a job)
  or a first Ctrl-C (SIGINT) raises a flag; a second Ctrl-C interrupts at once. With several
  processes, JAX's preemption service catches the signal and its sync point makes them agree on
  the step at which to stop; a flag raised in one process would leave the others waiting.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self._previous = ({number: signal.signal(number, self._handle) for number in self.SIGNALS}
                      if jax.process_count() == 1 else {})

  def _handle(self, signum, frame):
    del frame
    self.raised = True
    if signum == signal.SIGINT:  # the next Ctrl-C is an ordinary KeyboardInterrupt
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def requested(self, step: int) -> bool:
    # Called once per step, in order, by nothing else (see `checkpointing._Manager`).
    return self.raised or multihost_utils.reached_preemption_sync_point(step)

  def restore(self) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous = {}


class FiniteGuard:
  """The per-step metrics, fetched from the devices only when the loop needs them.

  `check()` is the loop's only host sync: it fetches the metrics of the steps since the last
  check and raises `NonFiniteError` at the first NaN or infinite loss or gradient, before
  anything saves that state. Which steps the devices have finished is asked without waiting
  (`computed`), for the progress bar: the host runs ahead of the devices, and the bar would
  otherwise move only at checks, every `train.log_every_steps`.
  """

  def __init__(self, log: "RunLog", manager: ocp.CheckpointManager):
    self._log, self._manager = log, manager
    self._unchecked: list[tuple[int, Any]] = []
    self._computed = 0  # how many of the unchecked steps are known to be computed
    self.checked: list[tuple[int, dict[str, float]]] = []

  def add(self, step: int, metrics: Any) -> None:
    self._unchecked.append((step, metrics))

  def computed(self) -> int | None:
    """The newest unchecked step whose metrics are computed (None: none yet), asked without
    waiting; the devices run the steps in order, so the ones before it are done too."""
    while (self._computed < len(self._unchecked)
           and jax.tree.leaves(self._unchecked[self._computed][1])[0].is_ready()):
      self._computed += 1
    return self._unchecked[self._computed - 1][0] if self._computed else None

  def wait(self, progress: reporting.Progress) -> None:
    """Waits for the unchecked steps one by one, moving `progress` as each finishes: the wait
    the check makes anyway, in steps (the devices run on meanwhile)."""
    for step, metrics in self._unchecked[self._computed:]:
      jax.block_until_ready(metrics)
      self._computed += 1
      progress.advance(step)

  def check(self) -> None:
    self.wait(self._log.progress)
    fetched = parallel.fetch_replicated([metrics for _, metrics in self._unchecked])
    steps = [(step, {k: float(v) for k, v in metrics.items()})
             for (step, _), metrics in zip(self._unchecked, fetched, strict=True)]
    self._unchecked.clear()
    self._computed = 0
    bad = _first_non_finite(steps)
    if bad is not None:
      latest = self._manager.latest_step()
      message = (f"step {bad[0]}: the {bad[1]} is not finite; stopped without saving it "
                 f"(newest checkpoint: {'none' if latest is None else f'step {latest}'}). "
                 "Lower optim.learning_rate, or check the data.")
      self._log.stop(bad[0], message)
      raise NonFiniteError(message)
    self.checked.extend(steps)

  def mean_and_clear(self) -> dict[str, float]:
    """The mean of every metric over the checked steps, which are then forgotten."""
    means = {k: float(np.mean([m[k] for _, m in self.checked])) for k in self.checked[0][1]
             if not k.endswith("/grads_finite")}
    self.checked.clear()
    return means


def _first_non_finite(steps: list[tuple[int, dict[str, float]]]) -> tuple[int, str] | None:
  """(step, what) of the first step whose losses or gradients are not all finite."""
  for step, metrics in steps:
    for name, value in metrics.items():
      if name.endswith("/grads_finite") and value < 1.0:
        return step, f"{name.split('/')[0]} model's gradients"
      if not np.isfinite(value):
        model, _, term = name.partition("/")
        return step, f"{model} model's {term or model} ({value})"
  return None


class DelayedCheckpoint:
  """A scheduled checkpoint waits one step: the state is saved only once the next step's
  losses, computed from it, are known to be finite (a diverging update can leave finite
  weights that only the next forward pass turns into NaN).

  The waiting copy is made on the devices, into the state's own shardings, after the step
  that made the state and before the next step, which is donated that state.
  """

  def __init__(self, manager: ocp.CheckpointManager, rng: jax.Array, log: "RunLog",
               state: Any):
    self._manager, self._rng, self._log = manager, rng, log
    self._copy = parallel.device_copier(state)
    self._pending: tuple[int, Any] | None = None

  @property
  def pending(self) -> bool:
    return self._pending is not None

  def schedule(self, step: int, state: Any) -> None:
    self._pending = (step, self._copy(state))

  def commit(self) -> None:
    """Saves the waiting state; call after the metrics of the step after it were checked."""
    if self._pending is not None:
      self.save(*self._pending)
      self._pending = None

  def save(self, step: int, state: Any) -> None:
    """Saves `state` now, with the log up to `step` (so a killed run keeps it)."""
    checkpointing.save(self._manager, state, self._rng, step)
    self._log.write()


class RunLog:
  """What the run reports: `results.json`, TensorBoard scalars and the progress bar.

  A resumed run keeps the log of the interrupted one up to the checkpoint it resumes from.
  Only process 0 writes.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, total_steps: int,
               start_step: int, config_changes: dict[str, Any], resumed: bool):
    self.is_chief = jax.process_index() == 0
    self.path = epath.Path(workdir) / "results.json"
    self.results: dict[str, Any] = {"config": config.to_dict(), "total_steps": total_steps,
                                    "evaluations": [], "train_log": []}
    if self.path.exists():
      previous = reporting.read_json(self.path)
      for key in ("evaluations", "train_log", "config_changes", "provenance"):
        self.results[key] = [entry for entry in previous.get(key, [])
                             if entry["step"] <= start_step]
    # What this invocation computes with, from the step it starts at: a resumed run may have
    # moved to other code or another machine (results.json from before the record have none).
    self.results.setdefault("provenance", []).append({"step": start_step, **provenance.record()})
    if self.is_chief and resumed:
      print(f"Resuming from step {start_step} in {workdir}", flush=True)
    if config_changes:
      self.results.setdefault("config_changes", []).append(
          {"step": start_step, "changes": config_changes})
      if self.is_chief:
        print("Continuing with changed settings: " + ", ".join(
            f"{field} {old!r} -> {new!r}" for field, (old, new) in config_changes.items()),
              flush=True)
    self.progress = reporting.Progress(total_steps=total_steps, start_step=start_step,
                                       global_batch_size=config.train.batch_size,
                                       enabled=self.is_chief)
    self.writer = reporting.ScalarWriter(workdir, enabled=self.is_chief)

  def message(self, text: str) -> None:
    """Prints above the progress bar (process 0 only)."""
    self.progress.write(text)

  def write(self) -> None:
    if self.is_chief:
      reporting.write_json(self.path, self.results)

  def train_scalars(self, step: int, scalars: dict[str, float]) -> None:
    scalars["images_per_second"] = self.progress.update(step, scalars)
    self.writer.write(step, scalars)
    self.results["train_log"].append({"step": step, **scalars})

  def evaluation(self, result: dict[str, Any]) -> None:
    self.results["evaluations"].append(result)
    accuracy = result["accuracy"]
    self.writer.write(result["step"], {f"{result['kind']}_eval/{model}/{name}_accuracy": value
                                       for model, by_name in accuracy.items()
                                       for name, value in by_name.items()})
    self.progress.write(f"step {result['step']} ({result['num_examples']} examples): " + ", ".join(
        f"{model} " + " ".join(f"{report.column_title(name)} {100 * value:.2f}%"
                               for name, value in by_name.items())
        for model, by_name in accuracy.items()))
    self.write()
    self.progress.reset_clock()

  def final(self, result: dict[str, Any], *, eps: float) -> None:
    """Records the final evaluation and prints its table."""
    self.evaluation(result)
    self.results["final"] = result
    self.write()
    self.progress.close()
    if self.is_chief:
      print("\n" + report.accuracy_table(result["accuracy"], eps=eps), flush=True)

  def stop(self, step: int, reason: str) -> None:
    self.results["stopped"] = {"step": step, "reason": reason}
    self.write()

  def close(self) -> None:
    self.progress.close()
    self.writer.close()


class Evaluation:
  """The loop's evaluations: PGD-K (`config.eval`) on the first `eval.periodic_num_examples`
  examples periodically (the learning curve) and on `eval.num_examples` at the end."""

  def __init__(self, exp: experiment.Experiment, rng: jax.Array):
    config = exp.config
    self._exp, self._rng = exp, rng
    self._evaluator = evaluator_lib.Evaluator(
        exp.eval_apply, exp.mesh, [attack_specs.parse(f"pgd{config.eval.num_steps}")],
        evaluator_lib.training_settings(config.eval, unroll=exp.unrolls_attacks))
    self._data = {"final": pipeline.eval_data(config, split=config.eval.split,
                                              num_examples=config.eval.num_examples)}
    periodic = config.eval.periodic_num_examples or config.eval.num_examples
    self._data["periodic"] = (self._data["final"] if periodic == config.eval.num_examples else
                              pipeline.eval_data(config, split=config.eval.split,
                                                 num_examples=periodic))

  @property
  def periodic_differs(self) -> bool:
    """Whether the periodic evaluations use other examples than the final one."""
    return self._data["periodic"] is not self._data["final"]

  def __call__(self, state: Any, step: int, kind: str) -> dict[str, Any]:
    variables = {name: model_state.variables
                 for name, model_state in self._exp.method.models(state).items()}
    result = self._evaluator(variables, self._data[kind], jax.random.fold_in(self._rng, step))
    return {"step": step, "epoch": step / self._exp.steps_per_epoch, "kind": kind,
            "split": self._exp.config.eval.split, "num_examples": result.num_examples,
            "accuracy": result.accuracy}


def _dataset_info_chief_first(dataset_config: ml_collections.ConfigDict) -> catalog.DatasetInfo:
  """Dataset metadata, writing CIFAR's array cache if needed: process 0 first, then the others.

  Processes that share `data_dir` (a bucket, or one machine's disk) then find the cache written
  instead of racing to write it; processes on other hosts with a local `data_dir` write their
  own copy. A TFDS dataset is never downloaded or built here (`act_jax.prepare_data` does it).
  """
  datasets.check_available(dataset_config)  # every process: all stop at once if it is missing
  is_chief = jax.process_index() == 0
  info = datasets.dataset_info(dataset_config) if is_chief else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("act_jax: dataset prepared by process 0")
  return info if is_chief else datasets.dataset_info(dataset_config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.method` as `config` says, resuming from the newest checkpoint in `workdir`.

  Returns the results that are also written to `workdir/results.json`; they hold "final" once
  the run has finished, and not when it stopped early for a preemption.
  """
  mesh = parallel.make_mesh()
  config_validation.validate_config(config, num_devices=mesh.size,
                                    num_processes=jax.process_count())
  # Everything that can refuse the run does so before the workdir changes.
  workdir_lib.check_usable(workdir)
  config_changes = workdir_lib.config_changes(workdir, config)
  info = _dataset_info_chief_first(config.dataset)
  with workdir_lock.held(workdir):
    try:
      return _train(config, workdir, mesh, info, config_changes)
    except write_failures.WriteFailed as failure:
      newest = checkpointing.newest_committed_step(workdir)
      raise write_failures.WriteFailed(
          f"{failure}; the run stopped. Its newest committed checkpoint "
          f"({'none' if newest is None else f'step {newest}'}) and results.json up to it are "
          "intact: free space, then run the same command again to resume") from None


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
           info: catalog.DatasetInfo, config_changes: dict[str, Any]) -> dict[str, Any]:
  """The run itself, in a workdir this process (or process 0) holds the lock of."""
  if jax.process_index() == 0:
    workdir_lib.create(workdir, config)
  data = pipeline.train_data(config, mesh)
  exp = experiment.build(config, mesh, info, steps_per_epoch=data.steps_per_epoch)
  init_rng, rng, eval_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state, rng, step = exp.initial_state(init_rng), parallel.replicate(rng, mesh), 0
  manager = checkpointing.checkpoint_manager(workdir, config.train.max_checkpoints_to_keep)
  restored = checkpointing.restore_latest(manager, state, rng,
                                          move_unrestorable=jax.process_index() == 0)
  if restored is not None:
    state, rng, step = restored
  log = RunLog(config, workdir, total_steps=exp.total_steps, start_step=step,
               config_changes=config_changes, resumed=restored is not None)
  train_step = parallel.distribute_train_step_with_data(exp.train_step(), data.device_batch,
                                                        mesh)
  evaluate = Evaluation(exp, eval_rng)
  guard, checkpoint = FiniteGuard(log, manager), DelayedCheckpoint(manager, rng, log, state)
  preemption = Preemption()
  with _closing(manager, preemption, log):
    if (0 < step < exp.total_steps and every(step, config.train.eval_every_steps)
        and not any(e["step"] == step for e in log.results["evaluations"])):
      # A run stopped at an evaluation step saves its checkpoint before that evaluation: do it
      # now, or the learning curve would miss that point for good.
      log.evaluation(evaluate(state, step, "periodic"))
    while step < exp.total_steps:
      state, metrics = train_step(state, *data.step_inputs(step), rng)
      step += 1
      guard.add(step, metrics)
      log.progress.advance(guard.computed())
      stop = preemption.requested(step)
      last = stop or step == exp.total_steps
      logs = every(step, config.train.log_every_steps) or step == exp.total_steps
      scheduled = every(step, config.train.checkpoint_every_steps)
      # The last step's periodic evaluation is the final one, unless that uses other examples.
      evaluates = every(step, config.train.eval_every_steps) and (
          step != exp.total_steps or evaluate.periodic_differs)
      if logs or scheduled or last or evaluates or checkpoint.pending:
        guard.check()
      checkpoint.commit()
      if logs:
        log.train_scalars(step, guard.mean_and_clear())
      if last:  # no next step to wait for
        checkpoint.save(step, state)
      elif scheduled:
        checkpoint.schedule(step, state)
      if stop:
        log.message(f"Stopped at step {step}; resume by running the same command again.")
        return log.results
      if evaluates:
        log.evaluation(evaluate(state, step, "periodic"))
    preemption.restore()  # the final evaluation has no checkpoint to stop at: it stops at once
    with interruption.raising_on_signals(
        "the final evaluation", f"the run's last checkpoint (step {step}) is saved"):
      log.final(evaluate(state, step, "final"), eps=config.eval.eps)
    return log.results


@contextlib.contextmanager
def _closing(manager: ocp.CheckpointManager, preemption: Preemption,
             log: RunLog) -> Iterator[None]:
  """Waits for the last checkpoint and closes the logs when the loop ends. A failure to write
  them is reported (`WriteFailed`) after a normal end, and stays silent when the loop is
  already failing, so that the line the user sees is the first failure's."""
  def finish() -> None:
    preemption.restore()
    try:
      checkpointing.wait_until_finished(manager)
    finally:
      log.close()

  try:
    yield
  except BaseException:
    with contextlib.suppress(Exception):
      finish()
    raise
  finish()
