"""Stopping work that has no checkpoint of its own (an evaluation) on SIGINT or SIGTERM.

Training stops at its next step with a checkpoint (`train.Preemption`). An evaluation writes
nothing until it has finished, so the clean way to stop one is at once: inside
`raising_on_signals`, either signal raises `Interrupted`, which the command lines report in one
line and exit with 130 (whichever the signal, so that a script tells an interrupted command from
a finished one by its exit status alone).
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax

from act_jax.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(UserError):
  """SIGINT or SIGTERM stopped the command; the message says what was kept and how to resume."""
  exit_code = 130


@contextlib.contextmanager
def raising_on_signals(what: str, kept: str) -> Iterator[None]:
  """SIGINT and SIGTERM raise `Interrupted` inside the block, naming `what` was stopped and
  what was `kept`. In a multi-process run JAX's preemption service owns SIGTERM, and outside
  the main thread Python cannot set handlers: both keep the handlers they have."""
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    raise Interrupted(f"{signal.Signals(signum).name} during {what}: {kept}; run the same "
                      "command again to resume")

  previous = {number: signal.signal(number, handle) for number in SIGNALS}
  try:
    yield
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
