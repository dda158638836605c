"""What every act_jax command line shares: flags parsed, expected errors reported in one line,
and the `--config` flag, which takes a shipped recipe's name or any config file's path.

A mistyped config field, a missing config file, a bad flag value or any `UserError` ends the
command with `error: <one line>` on stderr and a non-zero exit; tracebacks are left to bugs.
"""

import contextlib
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

import configs
from act_jax import distributed, stderr
from act_jax.errors import UserError

MAX_MESSAGE = 400
CONFIG_FLAG = "config"
DEFAULT_RECIPE = "fashion_mnist"
# absl's flags that print help and exit (1, which a command makes 0: help is no failure).
HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")
# XLA programs that took at least this long to compile are kept on disk between commands.
CACHE_MIN_COMPILE_SECONDS = 1.0

# The flags `define_config_flag` defines belong to the command that calls it, and are listed by
# that command's --help.
flags.disclaim_key_flags()


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


def underscored_flags(argv: Sequence[str], names: Container[str]) -> list[str]:
  """`argv` with each dashed spelling of a flag in `names` (`--num-examples=8`) rewritten to
  the flag's own (`--num_examples=8`), and one notice on stderr that names the new spellings.

  Every command spells its flags with underscores, as absl, Flax and the config fields do;
  `python -m act_jax.evaluate` spelled its flags with dashes before, and those spellings work
  until the next release. Arguments after `--` are left alone.
  """
  rewritten, renamed, flags_ended = list(argv[:1]), [], False
  for argument in argv[1:]:
    flags_ended = flags_ended or argument == "--"
    name, equals, value = argument.partition("=")
    dashes = "-" * min(len(name) - len(name.lstrip("-")), 2)
    underscored = name[len(dashes):].replace("-", "_")
    if not flags_ended and dashes and "-" in name[len(dashes):] and underscored in names:
      renamed.append(f"{dashes}{underscored} (for {name})")
      argument = f"{dashes}{underscored}{equals}{value}"
    rewritten.append(argument)
  if renamed:
    print(f"notice: flags are spelled with underscores now: {', '.join(renamed)}; the dashed "
          "spellings are read until the next release", file=sys.stderr, flush=True)
  return rewritten


def _asks_for_help(argv: Sequence[str]) -> bool:
  return any(argument.startswith("-") and argument.lstrip("-").split("=")[0] in HELP_FLAGS
             for argument in argv[1:])


def _parse_flags(argv: list[str]) -> list[str]:
  argv = underscored_flags(argv, flags.FLAGS)
  try:
    return flags.FLAGS(argv)
  except SystemExit as exit_request:
    if exit_request.code == 1 and _asks_for_help(argv):  # absl exits 1 after the help it shows
      sys.exit(0)
    raise
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


class ConfigFileError(UserError, FileNotFoundError):
  """A `--config` value that is neither a file nor a shipped recipe's name."""


def recipe_names() -> tuple[str, ...]:
  """The shipped recipes (`configs/<name>.py`), without `base`, which only the recipes use."""
  return tuple(sorted(module.name for module in pkgutil.iter_modules(configs.__path__)
                      if module.name != "base"))


def config_file(value: str, flag_name: str = CONFIG_FLAG) -> str:
  """What `config_flags` should read for `--<flag_name>=value`: a file path as given, or a
  shipped recipe's name as the installed recipe's file, either with its `:argument` for
  `get_config(argument)`.

  Recipes are found in the installed `configs` package, so `--config=fashion_mnist` (and the
  default) work from any working directory, as does a path; relative paths are read from the
  working directory, as `config_flags` reads them.
  """
  path, colon, argument = value.partition(":")
  if os.path.isfile(path):
    return value
  names = recipe_names()
  if path in names:
    return os.path.join(os.path.dirname(configs.__file__), f"{path}.py") + colon + argument
  raise ConfigFileError(f"--{flag_name}={value}: no such config file, nor a shipped recipe "
                        f"({', '.join(names)})")


class _RecipeOrFileParser(flags.ArgumentParser):
  """`config_flags`' own parser of a config file, given the file `config_file` resolves."""

  def __init__(self, file_parser: flags.ArgumentParser, flag_name: str):
    self._file_parser, self._flag_name = file_parser, flag_name

  def parse(self, argument: str) -> Any:
    return self._file_parser.parse(config_file(argument, self._flag_name))

  def flag_type(self) -> str:
    return self._file_parser.flag_type()


def define_config_flag(help_string: str) -> flags.FlagHolder:
  """The `--config` flag of a command: a shipped recipe's name (default: `fashion_mnist`) or
  a config file's path, each optionally `:argument`; `--config.<field>=value` overrides."""
  with flag_errors_in_one_line():
    holder = config_flags.DEFINE_config_file(
        CONFIG_FLAG, config_file(DEFAULT_RECIPE),
        f"{help_string} A shipped recipe's name ({', '.join(recipe_names())}) or a config "
        "file's path (a .py with get_config()).", lock_config=True)
  # The default was read as a path when the flag was defined; values given on the command
  # line are read when the flags are parsed, by the parser that also knows recipe names.
  flag = flags.FLAGS[CONFIG_FLAG]
  flag.parser = _RecipeOrFileParser(flag.parser, CONFIG_FLAG)
  flag.default_as_str = repr(DEFAULT_RECIPE)
  return holder


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

  `config_flag` names a `config_flags` flag, whose errors surface when it is first read. XLA's
  slow-compile alarms are held back (`stderr.hold_back_native_noise`) unless `--verbosity` is
  given.
  """

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      stderr.hold_back_native_noise()
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
