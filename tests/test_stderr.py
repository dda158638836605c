"""XLA's slow-compile alarms stay out of a command's stderr; everything else comes through."""

import os
import subprocess
import sys

import pytest

from act_jax import stderr

from helpers import REPO

SLOW_COMPILE = (
    b"E1203 16:53:08.091115  1234 slow_operation_alarm.cc:73] \n"
    b"********************************\n"
    b"[Compiling module jit_step] Very slow compile? If you want to file a bug, run with envvar "
    b"XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.\n"
    b"********************************\n")
SLOW_COMPILE_ENDED = (
    b"E1203 16:55:08.091115  1234 slow_operation_alarm.cc:140] The operation took 2m0.1s\n\n"
    + SLOW_COMPILE.split(b"\n", 1)[1])
CONSTANT_FOLDING = (
    b"2026-12-03 16:53:08.091115: E external/xla/xla/service/slow_operation_alarm.cc:65] "
    b"Constant folding an instruction is taking > 1s:\n\n"
    b"  %reduce.5 = f32[128,10]{1,0} reduce(f32[128,10,9]{2,1,0} %x, f32[] %c), dimensions={2}\n"
    b"\n"
    b"This isn't necessarily a bug; constant-folding is inherently a trade-off between "
    b"compilation time and speed at runtime.\n\n"
    b"If you'd like to file a bug, run with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and attach "
    b"the results.\n")
KEPT = (b"warning: checkpoint step 6 cannot be restored\n",
        b"E1203 16:53:09.000000  1234 pjrt_client.cc:12] a real error\n",
        b"********\n",  # asterisks that close no alarm
        b" 50%|#####     | 4/8\r",
        b"error: interrupted (Ctrl-C)\n")


def stream() -> tuple[bytes, bytes]:
  """(what native code and Python wrote, what the user should see)."""
  written = (SLOW_COMPILE + KEPT[0] + CONSTANT_FOLDING + KEPT[1] + SLOW_COMPILE_ENDED + KEPT[2]
             + KEPT[3] + CONSTANT_FOLDING + KEPT[4])
  return written, b"".join(KEPT)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_the_filter_drops_the_alarms_and_passes_everything_else(chunk):
  written, expected = stream()
  noise = stderr.NoiseFilter()
  passed = b"".join(noise.feed(written[i:i + chunk]) for i in range(0, len(written), chunk))
  assert passed + noise.flush() == expected


def test_a_record_never_holds_back_more_than_its_bound():
  noise = stderr.NoiseFilter()
  unended = SLOW_COMPILE.split(b"[Compiling")[0]
  lines = [f"line {i}\n".encode() for i in range(2 * stderr.MAX_RECORD_LINES)]
  passed = noise.feed(unended + b"".join(lines))
  assert passed == b"".join(lines[stderr.MAX_RECORD_LINES + 1 - unended.count(b"\n"):])


def test_an_unfinished_line_is_passed_on_when_the_stream_pauses():
  noise = stderr.NoiseFilter()
  assert noise.feed(b"Password: ") == b"" and noise.holding
  assert noise.flush() == b"Password: " and not noise.holding


def run_python(code: str, *arguments: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *arguments], cwd=REPO, capture_output=True,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=120)


def test_a_process_filters_its_own_file_descriptor_2_even_when_it_crashes():
  """Native code writes to the descriptor, not to sys.stderr; what the process wrote last before
  dying (no atexit, no flush) still comes out, since the filter is a process of its own."""
  written, expected = stream()
  result = run_python("import os, sys; from act_jax import stderr; "
                      "stderr.hold_back_native_noise(); "
                      f"os.write(2, {written!r}); os._exit(3)")
  assert result.returncode == 3 and result.stderr == expected


@pytest.mark.parametrize("verbosity", [False, True])
def test_every_command_holds_the_alarms_back_unless_asked_with_verbosity(verbosity):
  """`command_line.run` is what every command (main, evaluate, study, analysis, export) runs."""
  written, expected = stream()
  result = run_python("import os; from act_jax import command_line; "
                      f"command_line.run(lambda argv: os.write(2, {written!r}))",
                      *(["--verbosity=0"] if verbosity else []))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == (written if verbosity else expected)
