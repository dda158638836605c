"""Orbax checkpoints of a whole run: train state (models, optimisers, step), RNG and step.

Saving is collective (every process calls it) and asynchronous; restoring places each array
straight into the sharding of the live state, so a run can resume on a different device count.
A checkpoint that cannot be restored falls back to the next older one.
"""

import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath

from act_jax import stderr, write_failures
from act_jax.errors import UserError

UNRESTORABLE_DIR = "unrestorable_checkpoints"
FAILED_RESTORE_SETTLE_S = 1.0  # for orbax's I/O callbacks after a failed restore to finish


class _ReadOnlyNotices(logging.Filter):
  """Drops orbax's warnings that a read-only manager is read-only."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "read only" not in message and "read_only=True" not in message


class _FailedSaveTracebacks(logging.Filter):
  """Drops orbax's logged tracebacks of a failed save (a full disk): each of its threads logs
  one, and the run reports the failure once, in one line (`write_failures`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


_FAILED_SAVE_TRACEBACKS = _FailedSaveTracebacks()


class _LateWriteCompletions:
  """An unraisable-exception hook that drops tensorstore writes finishing after their save's
  event loop closed, and passes every other unraisable exception on to the hook it replaced.

  When one write of an asynchronous save fails (a full disk), orbax's save ends and closes its
  event loop while the save's other writes are still in flight. Each of those, on finishing,
  asks the closed loop to wake its awaiter (`call_soon_threadsafe`); asyncio refuses with
  "Event loop is closed", and tensorstore prints that, with a traceback, as an unraisable
  exception. Nothing waits for those writes any more, and the failed save is reported once, in
  one line (`write_failures`).
  """

  def __init__(self, previous: Callable[[Any], Any]):
    self.previous = previous

  def __call__(self, unraisable: Any) -> None:
    if not _is_late_write_completion(unraisable.exc_value, unraisable.exc_traceback):
      self.previous(unraisable)


def _is_late_write_completion(error: BaseException | None, trace: Any) -> bool:
  frames = [frame.name for frame in traceback.extract_tb(trace)] if trace else []
  return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
          and "call_soon_threadsafe" in frames)


def _drop_late_write_completions() -> None:
  if not isinstance(sys.unraisablehook, _LateWriteCompletions):
    sys.unraisablehook = _LateWriteCompletions(sys.unraisablehook)


class _OrphanedReadFailures(logging.Filter):
  """Drops asyncio's reports of orbax read tasks that failed on a checkpoint already reported
  as unrestorable.

  A failed restore leaves some of orbax's read tasks finished with an error nobody awaited;
  when the garbage collector frees one, at any later time, asyncio logs "Task exception was
  never retrieved" with a traceback. The run reported that checkpoint in one line already.
  """

  def __init__(self, checkpoint_dir: str):
    super().__init__()
    self.checkpoint_dir = checkpoint_dir.rstrip("/") + "/"

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("exception was never retrieved" in message
                and self.checkpoint_dir in message + str(record.exc_info and record.exc_info[1]))


def _quiet_orphaned_read_failures(checkpoint_dir: epath.Path) -> None:
  logging.getLogger("asyncio").addFilter(_OrphanedReadFailures(str(checkpoint_dir)))


class _Manager(ocp.CheckpointManager):
  """orbax's manager, kept away from JAX's preemption sync point, which the loop alone asks.

  JAX agrees on the step at which every process stops by taking the last step each process
  reported and choosing the one after the largest, so it needs one caller reporting steps in
  increasing order. orbax's manager also reports from its saves, some from a background thread
  when an asynchronous save completes, with the checkpoint's (earlier) step; the agreed step
  could then be one every process had passed, and a preempted run would never stop. orbax only
  logs with the answer here: checkpoints are saved every time they are asked for.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


def checkpoint_manager(workdir: str, max_to_keep: int | None,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """A manager under `workdir/checkpoints` that keeps the `max_to_keep` newest checkpoints.

  `read_only` managers (for loading a finished run) never create or delete anything; orbax's
  warnings that they are read-only, which is the point, are filtered out.
  """
  # A save that failed midway (a full disk) leaves a temporary directory, never a checkpoint;
  # a training manager removes them when it starts.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only,
                                         save_interval_steps=0 if read_only else 1,
                                         cleanup_tmp_directories=not read_only)
  directory = epath.Path(workdir) / "checkpoints"
  if "://" not in workdir:
    directory = directory.absolute()  # orbax (tensorstore) rejects relative local paths
  notices = _ReadOnlyNotices()
  absl_logging.get_absl_logger().addFilter(notices)
  if not read_only:
    absl_logging.get_absl_logger().addFilter(_FAILED_SAVE_TRACEBACKS)  # once: filters are a set
    _drop_late_write_completions()
  try:
    return _Manager(directory, options=options, item_names=("state", "position"))
  finally:
    absl_logging.get_absl_logger().removeFilter(notices)


def save(manager: ocp.CheckpointManager, state: Any, rng: jax.Array, step: int) -> None:
  """Saves asynchronously; call `manager.wait_until_finished()` before the process exits.

  The step is all the input pipeline needs to resume: its batches are a pure function of
  (seed, step).
  """
  # A failed write surfaces here or in `wait_until_finished`, in one of several types.
  with write_failures.reported(f"checkpoint step {step}", manager.directory, any_error=True):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"train_state": state, "rng": rng}),
        position=ocp.args.JsonSave({"step": step})))


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save; a failed one raises `WriteFailed`."""
  with write_failures.reported("a checkpoint", manager.directory, any_error=True):
    manager.wait_until_finished()


def newest_committed_step(workdir: str) -> int | None:
  """The newest checkpoint step on disk that orbax committed (None: none), read afresh."""
  return checkpoint_manager(workdir, None, read_only=True).latest_step()


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of the live tree: restore writes into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class CheckpointError(UserError):
  """An asked-for checkpoint is missing or cannot be restored."""


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Moves an unrestorable checkpoint out of the manager's way (it is never deleted), so the
  run can save that step again; returns where it went."""
  source = epath.Path(manager.directory) / str(step)
  target = epath.Path(manager.directory).parent / UNRESTORABLE_DIR / str(step)
  target.parent.mkdir(parents=True, exist_ok=True)
  if target.exists():
    target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
  source.rename(target)
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, state: Any, rng: jax.Array, *,
                   step: int | None = None, move_unrestorable: bool = False
                   ) -> tuple[Any, jax.Array, int] | None:
  """The newest checkpoint that restores (or the one of `step`), into `state`'s structure.

  A checkpoint that fails to restore (a truncated file, missing metadata) is reported in one
  line naming its step, and the next older one is tried: a damaged newest checkpoint never
  blocks a run with intact older ones. With `move_unrestorable` (training) the damaged one is
  moved aside to `<workdir>/unrestorable_checkpoints/`; otherwise (evaluation, `load_model`) it
  is left where it is. Returns None if there is no checkpoint (or none restores); raises if
  `step` names a missing or damaged one.
  """
  if step is not None and step not in manager.all_steps():
    raise CheckpointError(f"no checkpoint of step {step}; saved steps: "
                          f"{', '.join(map(str, manager.all_steps())) or 'none'}")
  tried: set[int] = set()
  while True:
    if step is not None:
      candidate = step
    else:
      # Listed afresh each time: a run training in this workdir meanwhile saves new checkpoints
      # and deletes old ones, so a reader's listing can go stale while it restores.
      manager.reload()
      untried = [s for s in manager.all_steps() if s not in tried]
      if not untried:
        return None
      candidate = max(untried)
    tried.add(candidate)
    # A failed restore leaves orbax's I/O threads calling back into a closed event loop, each
    # printing a traceback: the attempt's stderr is held back, and dropped if it fails.
    with stderr.captured() as captured:
      try:
        restored = manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract({"train_state": state, "rng": rng})),
            position=ocp.args.JsonRestore()))
        error = None
      except Exception as failure:  # noqa: BLE001  (orbax reports damage in many types)
        error = failure
        time.sleep(FAILED_RESTORE_SETTLE_S)
      printed = captured()
    if error is None:
      sys.stderr.write(printed)
      return (restored.state["train_state"], restored.state["rng"],
              int(restored.position["step"]))
    _quiet_orphaned_read_failures(epath.Path(manager.directory) / str(candidate))
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    if step is not None:
      raise CheckpointError(f"checkpoint step {step} in {manager.directory} cannot be "
                            f"restored ({reason})") from None
    if not (epath.Path(manager.directory) / str(candidate)).exists():
      continue  # deleted by the run that saves here since it was listed: not damage
    where = (f"moved aside to {move_aside(manager, candidate)}" if move_unrestorable
             else "left in place")
    _warn(f"checkpoint step {candidate} in {manager.directory} cannot be restored "
          f"({reason}); it is {where}, and the next older checkpoint is tried")
