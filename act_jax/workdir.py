"""Whether a run may start, or continue, in a workdir; nothing is written until it may.

A workdir holds one run: its config.json, checkpoints, TensorBoard logs and results.json. A
rerun of the same command resumes it. A rerun with a changed config may continue only if the
change leaves the checkpoints meaning what they meant: more epochs or steps, other logging,
checkpointing or evaluation settings, or the data's new location. Anything else (model, widths,
dataset, method, batch, seed, optimiser, attack) would mix two runs in one history, so it is
refused before anything in the workdir changes, naming the fields that differ.
"""

import json
import os
from typing import Any

import ml_collections
from etils import epath

from act_jax.errors import UserError

CONFIG_FILE = "config.json"
# Fields (or field prefixes, ending in ".") a resumed run may change.
SAFE_TO_CHANGE = ("train.epochs", "train.max_steps", "train.log_every_steps",
                  "train.checkpoint_every_steps", "train.max_checkpoints_to_keep",
                  "train.eval_every_steps", "eval.", "reference_study", "dataset.data_dir",
                  "dataset.fashion_mnist_dir")


class WorkdirError(UserError):
  """The workdir cannot hold the run: it is a file, or it cannot be created or written."""


class ConfigChangeRefused(UserError):
  """The workdir holds a run whose config differs in a field that the checkpoints depend on."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flat(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json stores it (tuples as lists), so the two compare like for like."""
  return json.loads(config.to_json_best_effort())


def _is_safe(field: str) -> bool:
  return any(field == safe or (safe.endswith(".") and field.startswith(safe))
             for safe in SAFE_TO_CHANGE)


def check_usable(workdir: str) -> None:
  """Refuses a workdir that is a file, or whose nearest existing ancestor is not a directory."""
  if "://" in workdir:  # a bucket: the storage layer reports its own errors
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
  ancestor = path
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir} cannot be created: {ancestor} is not a writable "
                       "directory")


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """The changed fields, {field: [saved, new]}, of a rerun; raises if any may not change.

  Empty for a new workdir or an unchanged config. Reads only.
  """
  saved_path = epath.Path(workdir) / CONFIG_FILE
  if not saved_path.exists():
    return {}
  saved, new = _flat(json.loads(saved_path.read_text())), _flat(_plain(config))
  changes = {field: [saved.get(field), new.get(field)]
             for field in sorted(set(saved) | set(new)) if saved.get(field) != new.get(field)}
  refused = [field for field in changes if not _is_safe(field)]
  if refused:
    listed = ", ".join(f"{field} ({changes[field][0]!r} -> {changes[field][1]!r})"
                       for field in refused)
    raise ConfigChangeRefused(
        f"--workdir={workdir} holds a run with a different {listed}; its checkpoints depend "
        f"on those fields, so nothing was changed: use a new --workdir, or change only "
        f"{', '.join(s + '*' if s.endswith('.') else s for s in SAFE_TO_CHANGE)}")
  return changes


def create(workdir: str, config: ml_collections.ConfigDict) -> epath.Path:
  """Creates the workdir if needed and records the config the run continues with."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  except OSError as error:
    raise WorkdirError(f"--workdir={workdir} cannot be written: {error}") from None
  return path
