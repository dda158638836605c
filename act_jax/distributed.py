"""Joining a multi-process (multi-host) run: `jax.distributed.initialize` when the job has several.

On a Cloud TPU pod every worker runs the same command; under Slurm `srun` starts one process per
node (or per GPU); elsewhere the launcher sets `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`
and `JAX_PROCESS_ID`. In each case the processes must meet before any of them touches a device,
so this runs first thing in `main`.
"""

import os
from collections.abc import Mapping

import jax
from absl import flags

MODES = ("auto", "on", "off")
# Variables that only a multi-process launch sets (inside an `srun` step, an `mpirun` job).
_PROCESS_COUNT_VARIABLES = ("JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def define_flag() -> None:
  """`--distributed`, the one flag every command that can run in several processes shares."""
  flags.DEFINE_enum("distributed", "auto", MODES,
                    "Call jax.distributed.initialize() first: 'on' (TPU pods, Slurm, Open MPI, "
                    "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID), 'off', or "
                    "'auto' (when the environment describes several processes).")


def _int_variable(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launched_as_several_processes(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether the environment describes a job of more than one process.

  Cloud TPU pods are not detected here (their workers look like single machines until they
  ask the TPU metadata server); the pod launch script passes `--distributed=on`.
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any((_int_variable(environ, name) or 1) > 1 for name in _PROCESS_COUNT_VARIABLES)


def initialize(mode: str = "auto", environ: Mapping[str, str] = os.environ) -> bool:
  """Joins the job's other processes if `mode` says so; returns whether it did.

  "on": always (TPU pods, Slurm and Open MPI are detected by JAX itself; otherwise
  `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` must be set); "off":
  never; "auto": when `launched_as_several_processes`.
  """
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r}: allowed: {', '.join(MODES)}")
  if mode == "off" or (mode == "auto" and not launched_as_several_processes(environ)):
    return False
  # Processes whose devices are CPUs (CPU clusters, the multi-process tests) need a
  # cross-process collectives backend; accelerators use their own interconnect.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(num_processes=_int_variable(environ, "JAX_NUM_PROCESSES"),
                             process_id=_int_variable(environ, "JAX_PROCESS_ID"))
  return True
