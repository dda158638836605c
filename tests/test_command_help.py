"""Every command's `--help` lists its own flags and the shared multi-process ones, and exits 0
(absl lists only the flags of the module it runs, so a command defined elsewhere, or a shared
flag, showed nothing or hid under --helpfull; and absl exits 1 after help).

Every flag a command's help, its error messages or the docs name exists under that spelling:
all commands spell flags with underscores, and `python -m act_jax.evaluate`'s old dashed
spellings are still read, with a notice, until the next release.
"""

import ast
import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest

from act_jax import command_line

from helpers import REPO

# Each command's own flags that its --help must list.
EXPECTED_FLAGS = {
    "act_jax.main": ("--config", "--workdir", "--compare_to"),
    "act_jax.evaluate": ("--workdir", "--attacks", "--eps", "--num_examples", "--split",
                         "--output", "--fab_steps", "--square_queries", "--eps_sweep",
                         "--large_eps_max_accuracy"),
    "act_jax.study": ("--config", "--workdir", "--methods", "--seeds", "--epochs", "--cascade",
                      "--fab_steps", "--square_queries", "--output_dir"),
    "act_jax.analysis": ("--workdir", "--study", "--measures", "--num_examples"),
    "act_jax.export": ("--workdir", "--model", "--output", "--step"),
    "act_jax.prepare_data": ("--dataset", "--data_dir", "--manual_dir"),
    "act_jax.plot_curves": ("--workdir", "--output"),
    "act_jax.choose_on_validation": ("--candidates", "--model", "--metric"),
}
# No multi-process flags.
SINGLE_PROCESS = {"act_jax.export", "act_jax.prepare_data", "act_jax.plot_curves",
                  "act_jax.choose_on_validation"}
PACKAGE = pathlib.Path(REPO) / "act_jax"


def find_commands() -> dict[str, list[pathlib.Path]]:
  """{command: the source files whose messages are its own}: every module that runs
  `command_line.run`, with its package's modules for a package's `__main__`. Every other
  module's messages belong to all commands."""
  commands = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    if "command_line.run(" in path.read_text():
      if path.name == "__main__.py":
        commands[f"act_jax.{path.parent.name}"] = sorted(path.parent.glob("*.py"))
      else:
        commands[f"act_jax.{path.stem}"] = [path]
  return commands


OWN_SOURCES = find_commands()
# What other programs' flags, or the old spellings, a module names on purpose.
NOT_OURS = {
    "act_jax/provenance.py": {"--no-optional-locks", "--porcelain", "--show-toplevel",
                              "--untracked-files"},  # git's
    "act_jax/data/fashion_mnist.py": {"--reinstall"},  # apt-get's
    "act_jax/command_line.py": {"--num-examples"},  # the old spelling it still reads
}
# A flag as text names it: --name, --name=value, --config.field=value, and the dashed
# spellings that no longer exist (--num-examples), so that those are caught too.
FLAG_MENTION = re.compile(r"(?<![\w-])--([a-z?][a-z0-9_]*(?:[.-][a-z0-9_]+)*)")


@functools.cache
def command_help(module: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))


@functools.cache
def listed_flags(module: str) -> frozenset[str]:
  """The flags `module --help` lists, as `--name` (absl writes booleans as `--[no]name`)."""
  return frozenset(line.split(":")[0].strip().replace("[no]", "")
                   for line in command_help(module).stdout.splitlines()
                   if line.startswith("  --"))


@functools.cache
def config_fields() -> frozenset[str]:
  from configs import base

  def flat(tree: dict, prefix: str = "") -> list[str]:
    return [field for key, value in tree.items()
            for field in (flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                          else [f"{prefix}{key}"])]

  return frozenset(flat(base.get_config().to_dict()))


@functools.cache
def absl_flags() -> frozenset[str]:
  """The flags absl defines for every command (--verbosity, ...), which --help leaves out."""
  from absl import app, flags, logging  # noqa: F401  (they define the flags)
  defined = {flag.name for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
             if module.startswith("absl.") for flag in module_flags}
  return frozenset(defined | set(command_line.HELP_FLAGS))


def unknown_flags(text: str, known: frozenset[str]) -> set[str]:
  """The flags `text` names that are not in `known`. XLA's flags (in XLA_FLAGS) and absl's
  own are known everywhere; `--config.<field>` (a run's override, which a message may suggest
  to another command) needs the field to exist."""
  unknown = set()
  for name in FLAG_MENTION.findall(text):
    if name.startswith("xla_") or name in absl_flags():
      continue
    if name.startswith("config.") and name.removeprefix("config.") in config_fields():
      continue
    if f"--{name}" not in known:
      unknown.add(f"--{name}")
  return unknown


def string_constants(path: pathlib.Path) -> str:
  """Every string in a source file (messages, help texts, docstrings), f-strings' parts too."""
  tree = ast.parse(path.read_text())
  return "\n".join(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str))


def test_every_command_is_checked():
  assert set(EXPECTED_FLAGS) <= set(OWN_SOURCES)


@pytest.mark.parametrize("module", sorted(OWN_SOURCES))
def test_help_lists_the_commands_own_flags_and_the_shared_ones(module):
  result = command_help(module)
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.returncode == 0, result.stderr[-2000:]
  shared = () if module in SINGLE_PROCESS else ("--distributed", "--heartbeat_timeout")
  for flag in (*EXPECTED_FLAGS.get(module, ()), *shared):
    assert flag in listed_flags(module), (
        f"{module} --help does not list {flag}: {sorted(listed_flags(module))}")


@pytest.mark.parametrize("module", sorted(OWN_SOURCES))
def test_every_flag_a_commands_help_and_messages_name_exists(module):
  own = {str(path.relative_to(REPO)): unknown_flags(string_constants(path), listed_flags(module))
         for path in OWN_SOURCES[module]}
  own["--help"] = unknown_flags(command_help(module).stdout, listed_flags(module))
  assert {where: names for where, names in own.items() if names} == {}


def test_every_flag_a_shared_module_names_exists_in_some_command():
  own = {path for paths in OWN_SOURCES.values() for path in paths}
  every_flag = frozenset().union(*(listed_flags(module) for module in OWN_SOURCES))
  unknown = {where: unknown_flags(string_constants(path), every_flag) - NOT_OURS.get(where, set())
             for path in sorted(PACKAGE.rglob("*.py")) if path not in own
             for where in [str(path.relative_to(REPO))]}
  assert {where: names for where, names in unknown.items() if names} == {}


def documented_commands(text: str) -> list[tuple[str, str]]:
  """(module, its arguments) for each `python -m act_jax.<command>` in `text`, a command
  continued over lines with a backslash read as one, up to `&&`, `;` or a backquote."""
  joined = re.sub(r"\\\n\s*", " ", text)
  return re.findall(r"python3? -m (act_jax\.[a-z_]+)([^\n&;`]*)", joined)


@pytest.mark.parametrize("page", ["README.md", *sorted(
    str(path.relative_to(REPO)) for path in (pathlib.Path(REPO) / "docs").glob("*.md"))])
def test_every_flag_the_docs_give_a_command_exists(page):
  unknown = [(module, sorted(names)) for module, arguments
             in documented_commands((pathlib.Path(REPO) / page).read_text())
             if module in OWN_SOURCES
             and (names := unknown_flags(arguments, listed_flags(module)))]
  assert unknown == []


def test_old_dashed_spellings_are_read_as_the_new_ones_with_a_notice(capsys):
  names = {"num_examples", "eps_sweep", "no_cascade"}
  argv = ["prog", "--num-examples=8", "-eps-sweep", "0.1", "--no-cascade", "--eps-l2=1",
          "--config.train.batch-size=4", "--workdir=a-b", "--", "--num-examples=9"]
  assert command_line.underscored_flags(argv, names) == [
      "prog", "--num_examples=8", "-eps_sweep", "0.1", "--no_cascade", "--eps-l2=1",
      "--config.train.batch-size=4", "--workdir=a-b", "--", "--num-examples=9"]
  notice = capsys.readouterr().err
  assert notice.count("\n") == 1 and notice.startswith("notice: ")
  assert ("--num_examples (for --num-examples), -eps_sweep (for -eps-sweep), --no_cascade "
          "(for --no-cascade)") in notice
  assert command_line.underscored_flags(["prog", "--num_examples=8"], names) == [
      "prog", "--num_examples=8"]
  assert capsys.readouterr().err == ""


def test_an_old_dashed_spelling_still_works_on_the_command_line(tmp_path):
  """The value given under the old name reaches the flag: its check names the new spelling."""
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.evaluate", f"--workdir={tmp_path}", "--num-examples=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[0] == ("notice: flags are spelled with underscores now: --num_examples (for "
                      "--num-examples); the dashed spellings are read until the next release")
  assert lines[-1] == "error: --num_examples=0: must be >= 1"


@pytest.mark.parametrize("module, argv, flag", [
    ("benchmarks.throughput", ["--model=small_cnn", "--timed_steps=0"], "--timed_steps"),
    ("benchmarks.loop_throughput", ["--model=small_cnn", "--log_every=0"], "--log_every"),
    ("benchmarks.attack_throughput", ["--workload=small_cnn", "--num_examples=0"],
     "--num_examples"),
])
def test_a_benchmarks_range_error_names_the_flag_as_it_is_spelled(module, argv, flag, capsys):
  """The range checks build the flag's name from the argument's, so the source scan above
  cannot see them; they name the underscored flag, not a dashed spelling that is only read."""
  import importlib
  with pytest.raises(SystemExit) as raised:
    importlib.import_module(module).parse_args(argv)
  assert raised.value.code == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert f"{flag} " in error or f"{flag}=" in error, error
