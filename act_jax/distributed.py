"""Joining a multi-process (multi-host) run: `jax.distributed.initialize` when the job has several.

On a Cloud TPU pod every worker runs the same command; under Slurm `srun` starts one process per
node (or per GPU); elsewhere the launcher sets `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`
and `JAX_PROCESS_ID`. In each case the processes must meet before any of them touches a device,
so this runs first thing in `main`.
"""

import os
import sys
import time
from collections.abc import Mapping
from typing import NoReturn

import jax
from absl import flags
from jax._src import distributed as jax_distributed  # the coordination client: no public handle

MODES = ("auto", "on", "off")
DEFAULT_HEARTBEAT_TIMEOUT_S = 120
LOST_PROCESS_EXIT_CODE = 5
_SURVIVOR_WAIT_S = 5.0  # how long survivors wait for each other's roll call
# What a collective or the coordination service says when another process is gone.
_LOST_PROCESS_SIGNS = ("gloo", "connection reset", "heartbeat", "unavailable", "coordination",
                       "barrier", "nccl", "socket closed", "broken pipe")
# Variables that only a multi-process launch sets (inside an `srun` step, an `mpirun` job).
_PROCESS_COUNT_VARIABLES = ("JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


def define_flag() -> None:
  """`--distributed` and `--heartbeat_timeout`, the flags every command that can run in
  several processes shares."""
  flags.DEFINE_enum("distributed", "auto", MODES,
                    "Call jax.distributed.initialize() first: 'on' (TPU pods, Slurm, Open MPI, "
                    "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID), 'off', or "
                    "'auto' (when the environment describes several processes).")
  flags.DEFINE_integer("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_S,
                       "With several processes: seconds after which one that stopped responding "
                       "counts as lost, and the others stop (JAX's distributed heartbeat).")


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


def initialize(mode: str = "auto", environ: Mapping[str, str] = os.environ,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S) -> bool:
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
  if heartbeat_timeout_s < 1:
    raise ValueError(f"--heartbeat_timeout={heartbeat_timeout_s}: must be >= 1 second")
  jax.distributed.initialize(num_processes=_int_variable(environ, "JAX_NUM_PROCESSES"),
                             process_id=_int_variable(environ, "JAX_PROCESS_ID"),
                             heartbeat_timeout_seconds=heartbeat_timeout_s,
                             shutdown_timeout_seconds=heartbeat_timeout_s)
  return True


def initialize_from_flags() -> bool:
  """`initialize` as `--distributed` and `--heartbeat_timeout` (`define_flag`) say."""
  return initialize(flags.FLAGS.distributed,
                    heartbeat_timeout_s=flags.FLAGS.heartbeat_timeout)


def is_lost_process_error(error: BaseException) -> bool:
  """Whether `error` is a collective or coordination failure of a multi-process run: what
  the survivors see when another process dies."""
  text = str(error).lower()
  return (jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError)
          and any(sign in text for sign in _LOST_PROCESS_SIGNS))


def _lost_processes() -> list[int] | None:
  """The processes that do not answer a roll call in the coordination service's key-value
  store within a few seconds; None if the service (on process 0) cannot be reached."""
  client = jax_distributed.global_state.client
  count, me = jax.process_count(), jax.process_index()
  try:
    client.key_value_set(f"act_jax/survivors/{me}", "alive")
    deadline = time.time() + _SURVIVOR_WAIT_S
    while True:
      present = {int(key.rsplit("/", 1)[-1])
                 for key, _ in client.key_value_dir_get("act_jax/survivors/")}
      if len(present) == count or time.time() > deadline:
        return sorted(set(range(count)) - present)
      time.sleep(0.2)
  except Exception:  # noqa: BLE001  (the client reports an unreachable service in many types)
    return None


def exit_for_lost_process(error: BaseException) -> NoReturn:
  """Reports in one line which process was lost, and exits at once.

  `os._exit` skips JAX's exit handler, whose shutdown barrier would wait for the lost process
  until the heartbeat timeout and then abort with a core dump; everything this process had to
  write was committed or abandoned on the way here.
  """
  lost = _lost_processes()
  me = jax.process_index()
  who = ("process 0 (the coordinator) is unreachable" if lost is None else
         f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
         f"{jax.process_count()} stopped answering" if lost else
         "a collective failed although every process answers")
  reason = " ".join(str(error).split())[:160]
  print(f"error: process {me}: {who} ({reason}); this process stops too: restart every "
        "process with the same command to resume from the newest checkpoint",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(LOST_PROCESS_EXIT_CODE)
