"""What a result was computed with: the command, the code, the packages and the machine.

A run repeats digit for digit only with the same code and packages, on the same machine kind
and the same device count (README): float rounding differs between CPU kinds and between ways
of splitting a batch over devices, and the attacks' sign steps amplify it. `record()` writes
those down beside the numbers (results.json, study.json), so that two results that differ can
be told apart from a bug. This module is the one place that asks git and /proc/cpuinfo.
"""

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax

# The distributions whose versions change what a run computes or how it is stored.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_collections")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_GIT_TIMEOUT_S = 10


def command_line() -> str:
  """This process's command as it was typed: `python -m act_jax.main --workdir=...`."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name:
    program = f"python -m {spec.name.removesuffix('.__main__')}"
  else:
    program = f"python {sys.argv[0]}" if sys.argv and sys.argv[0] else "python"
  return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def _git(directory: str, *arguments: str) -> str | None:
  try:
    # --no-optional-locks: reading the state must not rewrite the index of a tree in use.
    return subprocess.run(["git", "--no-optional-locks", "-C", directory, *arguments],
                          capture_output=True, text=True, check=True,
                          timeout=_GIT_TIMEOUT_S).stdout
  except (OSError, subprocess.SubprocessError):
    return None


def git_state(package_dir: str = _PACKAGE_DIR) -> tuple[str | None, bool | None]:
  """(the commit of the clone the code runs from, whether its tracked files differ from it).

  (None, None) when the package is not a clone's own `act_jax/` (an installed copy, or one
  inside some other repository, whose commit would say nothing about this code).
  """
  found = _git(package_dir, "rev-parse", "--show-toplevel", "HEAD")
  if found is None or len(found.split()) != 2:
    return None, None
  toplevel, commit = found.split()
  if os.path.realpath(toplevel) != os.path.realpath(os.path.dirname(package_dir)):
    return None, None
  status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
  return commit, None if status is None else bool(status.strip())


def cpu_model() -> str:
  """The host CPU's model name ("AMD EPYC 7B13"), or what Python knows of it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "CPU"


def host_cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0))


def package_versions() -> dict[str, str | None]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def record(command: str | None = None) -> dict[str, Any]:
  """The reproducibility record of this process; JAX's backends start here if not yet started.

  `command` defaults to this process's command line. `xla_flags` are those the process runs
  with, including the ones act_jax sets for CPU devices (`parallel.use_one_cpu_device_per_core`).
  """
  commit, dirty = git_state()
  backend = jax.default_backend()
  return {"command": command_line() if command is None else command,
          "git_commit": commit, "git_dirty": dirty,
          "python": platform.python_version(), "packages": package_versions(),
          "backend": backend, "device_kind": jax.devices()[0].device_kind,
          "device_count": jax.device_count(), "process_count": jax.process_count(),
          "cpu_model": cpu_model() if backend == "cpu" else None, "cpu_cores": host_cores(),
          "xla_flags": os.environ.get("XLA_FLAGS")}


def machine_summary(run_record: dict[str, Any]) -> str:
  """One line for people: "AMD EPYC 7B13; 2 cores; 2 JAX device(s)"."""
  where = run_record["cpu_model"] or run_record["device_kind"]
  return (f"{where}; {run_record['cpu_cores']} cores; {run_record['device_count']} JAX "
          "device(s)")
