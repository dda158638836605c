"""Holding back what native code prints to stderr: library notices that are not the user's business.

TensorFlow prints start-up notices from C++ before any logging setting applies, orbax's I/O
threads print tracebacks after a failed restore, and XLA prints its slow-operation alarms while
a large program compiles; none of it goes through Python's `sys.stderr`, so the file descriptor
itself is redirected: into a temporary file (`captured`), or, for a whole command, through a
filter process that drops XLA's alarms and passes everything else (`hold_back_native_noise`).

Run as a script, this file is that filter: stdin to stdout, with the standard library only.
"""

import atexit
import contextlib
import os
import re
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

# XLA's alarms from slow_operation_alarm.cc: "Very slow compile? If you want to file a bug, run
# with envvar XLA_FLAGS=--xla_dump_to=..." and "Constant folding an instruction is taking > 1s"
# (each again as "The operation took ..." when it ends). ERROR-level records about compile time,
# printed by C++ whatever Python's logging says (the unrolled attack loops of CPU runs can set
# them off as they compile); they say nothing about the run.
NOISE_SOURCES = (b"slow_operation_alarm.cc:",)
# A record's message ends with XLA's hint to file a bug (and, for the compile alarm, a row of
# asterisks after it).
_RECORD_END = b"--xla_dump_to"
# A C++ log line, as absl (`E1203 16:53:08.091115 ...`) or TSL (`2026-12-03 16:53:08.09: E ...`)
# writes it.
_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d"
                       rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S*: [IWEF] )")
MAX_RECORD_LINES = 40  # a record never holds back more than this, whatever follows it
PAUSE_S = 0.1  # an unfinished line (a prompt, a "\r" bar) waits at most this long
WAIT_FOR_FILTER_S = 5.0


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


class NoiseFilter:
  """Drops the records of `NOISE_SOURCES` from a byte stream, line by line; passes the rest.

  A record is the line naming its source (`E1203 16:53:08.091115  123
  slow_operation_alarm.cc:73] ...`) and the lines of its message, up to XLA's hint to file a bug
  and the row of asterisks that may follow it. Any other log line ends a record early, and a
  record drops at most `MAX_RECORD_LINES` lines, so nothing else is lost.
  """

  def __init__(self):
    self._held = b""  # the start of a line whose end has not come yet
    self._record_lines = 0  # > 0: inside a record, counting its lines
    self._after_hint = False

  @property
  def holding(self) -> bool:
    return bool(self._held)

  def feed(self, data: bytes) -> bytes:
    """What to pass on of `data`; the start of an unfinished line waits for its end."""
    lines = (self._held + data).splitlines(keepends=True)
    self._held = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
    return b"".join(line for line in lines if self._keep(line))

  def flush(self) -> bytes:
    """The unfinished line held, judged as it is: on a pause in the stream, and at its end."""
    line, self._held = self._held, b""
    return line if line and self._keep(line) else b""

  def _keep(self, line: bytes) -> bool:
    if any(source in line for source in NOISE_SOURCES):
      self._record_lines, self._after_hint = 1, False
      return False
    if self._after_hint:
      self._after_hint = False
      if line.strip() and not line.strip().strip(b"*"):
        return False  # the row of asterisks that closes the compile alarm
    elif self._record_lines and not _LOG_LINE.match(line):
      self._record_lines += 1
      if _RECORD_END in line or self._record_lines > MAX_RECORD_LINES:
        self._record_lines, self._after_hint = 0, _RECORD_END in line
      return False
    self._record_lines = 0
    return True


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data):]


def forward_filtered(source: int, target: int) -> None:
  """Copies file descriptor `source` to `target` until its end, without `NoiseFilter`'s records.

  Lines pass on as they come; an unfinished one after `PAUSE_S` without more data.
  """
  noise = NoiseFilter()
  while True:
    ready, _, _ = select.select([source], [], [], PAUSE_S if noise.holding else None)
    data = os.read(source, 1 << 16) if ready else None
    if data == b"":
      break
    _write_all(target, noise.feed(data) if data else noise.flush())
  _write_all(target, noise.flush())


def hold_back_native_noise() -> None:
  """Routes file descriptor 2 through a filter process (this file as a script) for the rest of
  the process: XLA's slow-operation alarms are dropped, everything else passes, line by line.

  Every command calls this (`command_line.run`) unless `--verbosity` is given. The filter is a
  process of its own, in its own session, so that what a crashing process printed last still
  comes out (a thread would die with it) and a Ctrl-C meant for the command does not stop it;
  it ends when every writer of the pipe has closed it. At exit, stderr is given back and the
  filter waited for, so that nothing printed comes out after the command has ended.
  """
  try:
    original = os.dup(2)
  except OSError:  # no stderr to filter
    return
  read_end, write_end = os.pipe()
  try:
    filter_process = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=read_end,
        stdout=original, stderr=original, start_new_session=True)
  except OSError:  # no filter rather than no command
    for fd in (read_end, write_end, original):
      os.close(fd)
    return
  sys.stderr.flush()
  os.dup2(write_end, 2)
  for fd in (read_end, write_end):
    os.close(fd)

  def give_back() -> None:
    with contextlib.suppress(OSError, ValueError):
      sys.stderr.flush()
    os.dup2(original, 2)
    os.close(original)
    with contextlib.suppress(subprocess.TimeoutExpired):
      filter_process.wait(timeout=WAIT_FOR_FILTER_S)

  atexit.register(give_back)


if __name__ == "__main__":
  with contextlib.suppress(BrokenPipeError):
    forward_filtered(sys.stdin.fileno(), sys.stdout.fileno())
