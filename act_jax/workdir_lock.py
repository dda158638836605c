"""One writer per workdir: a run holds `WORKDIR/run.lock` while it writes there.

A job requeued while its first instance still runs, or one command started twice, would
otherwise write two histories of checkpoints and `results.json` into one directory. The lock
is a file created atomically (`O_CREAT | O_EXCL`) holding its holder's host, PID, process start
time and wall-clock start. A second run refuses in one line naming the holder. A lock whose
holder is gone (same host; the PID is dead, or is now another process) is taken over with a
line saying so; a holder on another host cannot be checked from here, so the line says how to
break the lock once that run is known to be gone. Readers (`act_jax.evaluate`, `load_model`)
take no lock: orbax shows them only committed checkpoints.

Within one process the lock is re-entrant, so a study can hold a run's lock across its
training and its evaluation. Workdirs in buckets (`gs://...`) have no atomic create and are
not locked.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from act_jax.errors import UserError
from act_jax.workdir import make_directory

LOCK_FILE = "run.lock"
_HELD_HERE: set[str] = set()  # lock paths this process holds


class WorkdirLocked(UserError):
  """Another live process holds the workdir."""


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), which tells a live holder from
  a new process that reuses its PID; None where /proc does not say."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _is_alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, under another user
    return True
  current = _process_start(pid)
  return start is None or current is None or current == start


def _this_holder() -> dict[str, object]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "process_start": _process_start(os.getpid()),
          "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _describe(holder: dict[str, object]) -> str:
  return f"PID {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _read(path: str) -> dict[str, object]:
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}  # being written, or damaged: treated as held by an unknown process


def _create(path: str, holder: dict[str, object]) -> bool:
  try:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(descriptor, "w") as f:
    json.dump(holder, f)
  return True


def acquire(workdir: str) -> str | None:
  """Takes the workdir's lock (the directory must exist); returns its path, or None when this
  process already holds it or the workdir is in a bucket. Raises `WorkdirLocked` if a live
  process holds it."""
  if "://" in workdir:
    return None
  path = os.path.abspath(os.path.join(workdir, LOCK_FILE))
  if path in _HELD_HERE:
    return None
  holder = _this_holder()
  while not _create(path, holder):
    current = _read(path)
    same_host = current.get("host") == holder["host"]
    pid = current.get("pid")
    if not (same_host and isinstance(pid, int)
            and not _is_alive(pid, current.get("process_start"))):
      fix = ("wait for it to finish, or stop it" if same_host else
             f"if that run is gone, delete {path} and run again")
      raise WorkdirLocked(f"--workdir={workdir} is in use by another run ({_describe(current)});"
                          f" nothing was changed: {fix}, or use another --workdir")
    stale = f"{path}.stale.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):  # another process may take it over first
      os.replace(path, stale)
      os.remove(stale)
      print(f"warning: took over the lock of {workdir} from a run that is gone "
            f"({_describe(current)})", file=sys.stderr, flush=True)
  _HELD_HERE.add(path)
  return path


def release(path: str | None) -> None:
  """Removes a lock `acquire` took, if it is still this process's."""
  if path is None:
    return
  _HELD_HERE.discard(path)
  current = _read(path)
  if current.get("pid") == os.getpid() and current.get("host") == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the block, creating the workdir. In a multi-process run
  process 0 holds it for all, and every process learns whether it got it, so all refuse
  together."""
  path, refusal = None, None
  if jax.process_index() == 0:
    try:
      make_directory(workdir)
      path = acquire(workdir)
    except UserError as error:
      refusal = error
  if jax.process_count() > 1:
    locked = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
    if not locked and refusal is None:
      refusal = WorkdirLocked(f"--workdir={workdir}: process 0 could not take the run's lock "
                              "(its line says why)")
  if refusal is not None:
    raise refusal
  try:
    yield
  finally:
    release(path)
