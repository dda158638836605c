"""What every act_jax command line shares: flags parsed, expected errors reported in one line.

A mistyped config field, a missing config file, a bad flag value or any `UserError` ends the
command with `error: <one line>` on stderr and a non-zero exit; tracebacks are left to bugs.
"""

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from absl import app, flags

from act_jax import distributed
from act_jax.errors import UserError

MAX_MESSAGE = 400
# XLA programs that took at least this long to compile are kept on disk between commands.
CACHE_MIN_COMPILE_SECONDS = 1.0


def fail(message: str, exit_code: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def _one_line(text: str) -> str:
  return " ".join(str(text).split())[:MAX_MESSAGE]


def _innermost_message(error: BaseException) -> str:
  """ml_collections wraps a KeyError's message in an AttributeError (in a KeyError ...)."""
  text = error.args[0] if error.args else error
  return _innermost_message(text) if isinstance(text, BaseException) else str(text)


def _flag_error_message(error: Exception, argv: Sequence[str]) -> str:
  """The bad flag named, where the error lets us tell which one it is."""
  text = _innermost_message(error)
  quoted = set(re.findall(r"'([^'\s]+)'", text))
  for argument in argv[1:]:
    name = argument.split("=", 1)[0]
    if name.startswith("--config.") and name.rsplit(".", 1)[-1] in quoted:
      suggestion = re.search(r'Did you mean "([^"]+)"', text)
      hint = f"; did you mean {suggestion[1]!r}?" if suggestion else ""
      return f"{name}: no such config field{hint}"
    if name == "--config" and "No such file" in text:
      return f"{argument}: no such config file"
  return _one_line(text)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001  (absl's flag errors, and what config_flags raises)
    fail(_flag_error_message(error, argv))


@contextlib.contextmanager
def flag_errors_in_one_line() -> Iterator[None]:
  """For defining and first reading a `config_flags` flag, which fail on a missing config file
  or an unknown `--config.*` field (the overrides are applied as the flag is defined)."""
  try:
    yield
  except Exception as error:  # noqa: BLE001  (a missing file, an unknown field, a bad value)
    fail(_flag_error_message(error, sys.argv))


def compilation_cache_directory() -> str:
  """Where commands keep compiled XLA programs: $JAX_COMPILATION_CACHE_DIR if set, else
  $XDG_CACHE_HOME/act_jax/xla (default ~/.cache/act_jax/xla)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "act_jax", "xla")


def use_persistent_compilation_cache() -> None:
  """Keeps compiled programs on disk, so that a command's second run skips compiling.

  On CPU the unrolled attack loops take minutes to compile (a 100-step APGD on the small CNN:
  about 4 minutes on 2 busy cores) and run in seconds: a second evaluation of the same shapes,
  every run of a study, and training resumed after a preemption reuse the first one's programs.
  A cache hit returns the very program a compile would build, so no result changes. JAX's own
  `jax_compilation_cache_dir`, set by the user, wins.
  """
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", compilation_cache_directory())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)


def run(main: Callable[[list[str]], None], *, config_flag: str | None = None) -> None:
  """`absl.app.run(main)`, with flag mistakes and `UserError`s reported as one line.

  `config_flag` names a `config_flags` flag, whose errors surface when it is first read.
  """

  def guarded(argv: list[str]) -> None:
    use_persistent_compilation_cache()
    if config_flag is not None:
      with flag_errors_in_one_line():
        flags.FLAGS[config_flag].value.to_dict()  # a deferred load failure raises here
    try:
      main(argv)
    except UserError as error:
      fail(_one_line(str(error)), error.exit_code)
    except Exception as error:
      if distributed.is_lost_process_error(error):
        distributed.exit_for_lost_process(error)
      raise
    except KeyboardInterrupt:
      fail("interrupted (Ctrl-C): what was committed is kept; run the same command again to "
           "resume", 130)

  app.run(guarded, flags_parser=_parse_flags)
