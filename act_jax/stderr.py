"""Holding back what native code prints to stderr: library notices that are not the user's business.

TensorFlow prints start-up notices from C++ before any logging setting applies, and orbax's I/O
threads print tracebacks after a failed restore; neither goes through Python's `sys.stderr`, so
the file descriptor itself is redirected.
"""

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def captured() -> Iterator[Callable[[], str]]:
  """Redirects file descriptor 2 (Python's and native code's stderr) into a temporary file;
  yields a function that returns what was written so far."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield lambda: (sys.stderr.flush(), capture.seek(0), capture.read())[2].decode(
          errors="replace")
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
