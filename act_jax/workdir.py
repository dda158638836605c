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
# Fields that change neither what a run computes nor what it reports (a study may compare runs
# that differ in them).
RESULT_NEUTRAL = ("train.log_every_steps", "train.checkpoint_every_steps",
                  "train.max_checkpoints_to_keep", "reference_study", "dataset.data_dir",
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


def _matches(field: str, names: tuple[str, ...]) -> bool:
  return any(field == name or (name.endswith(".") and field.startswith(name)) for name in names)


def _differences(workdir: str, config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """{field: [saved, new]} between the workdir's config.json (if any) and `config`."""
  saved_path = epath.Path(workdir) / CONFIG_FILE
  if not saved_path.exists():
    return {}
  saved, new = _flat(json.loads(saved_path.read_text())), _flat(_plain(config))
  return {field: [saved.get(field), new.get(field)]
          for field in sorted(set(saved) | set(new)) if saved.get(field) != new.get(field)}


def result_differences(workdir: str, config: ml_collections.ConfigDict) -> dict[str, list[Any]]:
  """The fields, {field: [saved, new]}, in which the run recorded in `workdir` computed or
  reported something other than `config` would; empty when its results are `config`'s."""
  return {field: values for field, values in _differences(workdir, config).items()
          if not _matches(field, RESULT_NEUTRAL)}


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
  changes = _differences(workdir, config)
  refused = [field for field in changes if not _matches(field, SAFE_TO_CHANGE)]
  if refused:
    listed = ", ".join(f"{field} ({changes[field][0]!r} -> {changes[field][1]!r})"
                       for field in refused)
    raise ConfigChangeRefused(
        f"--workdir={workdir} holds a run with a different {listed}; its checkpoints depend "
        f"on those fields, so nothing was changed: use a new --workdir, or change only "
        f"{', '.join(s + '*' if s.endswith('.') else s for s in SAFE_TO_CHANGE)}")
  return changes


def make_directory(workdir: str) -> epath.Path:
  """Creates the workdir if needed (the first thing a run writes, before its lock)."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise WorkdirError(f"--workdir={workdir} cannot be created: {error}") from None
  return path


def create(workdir: str, config: ml_collections.ConfigDict) -> epath.Path:
  """Creates the workdir if needed and records the config the run continues with."""
  path = make_directory(workdir)
  try:
    (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  except OSError as error:
    raise WorkdirError(f"--workdir={workdir} cannot be written: {error}") from None
  return path
