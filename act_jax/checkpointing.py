"""Orbax checkpoints of a whole run: train state (models, optimisers, step), RNG, data position.

Saving is collective (every process calls it) and asynchronous; restoring places each array
straight into the sharding of the live state, so a run can resume on a different device count.
"""

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


@dataclasses.dataclass(frozen=True)
class TrainingPosition:
  """Where the run is: the next step to take and the number of batches consumed so far.

  The input pipeline is a pure function of (seed, batch index), so `batches_consumed` is all it
  needs to continue with exactly the batches an uninterrupted run would have seen.
  """
  step: int
  batches_consumed: int


def checkpoint_manager(workdir: str, max_to_keep: int | None,
                       read_only: bool = False) -> ocp.CheckpointManager:
  """A manager under `workdir/checkpoints` that keeps the `max_to_keep` newest checkpoints.

  `read_only` managers (for loading a finished run) never create or delete anything.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only)
  directory = epath.Path(workdir) / "checkpoints"
  if "://" not in workdir:
    directory = directory.absolute()  # orbax (tensorstore) rejects relative local paths
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "position"))


def save(manager: ocp.CheckpointManager, state: Any, rng: jax.Array,
         position: TrainingPosition) -> None:
  """Saves asynchronously; call `manager.wait_until_finished()` before the process exits."""
  manager.save(position.step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"train_state": state, "rng": rng}),
      position=ocp.args.JsonSave(dataclasses.asdict(position))))


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of the live tree: restore writes into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore_latest(manager: ocp.CheckpointManager, state: Any, rng: jax.Array, *,
                   step: int | None = None) -> tuple[Any, jax.Array, TrainingPosition] | None:
  """The newest checkpoint (or the one of `step`) restored into `state`'s structure and shardings.

  Returns None if the directory holds no checkpoint; raises if `step` names a missing one.
  """
  if step is None:
    step = manager.latest_step()
    if step is None:
      return None
  elif step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint of step {step}; saved steps: "
                            f"{', '.join(map(str, manager.all_steps())) or 'none'}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract({"train_state": state, "rng": rng})),
      position=ocp.args.JsonRestore()))
  return (restored.state["train_state"], restored.state["rng"],
          TrainingPosition(**restored.position))
