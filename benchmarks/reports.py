"""How benchmark scripts record a run: the command that reproduces it, and JSON + markdown files."""

import argparse
import json
import os
import pathlib
import shlex
from collections.abc import Sequence
from typing import Any

from act_jax import command_line as act_jax_command_line

# Where a run's JSON and markdown go unless --output_dir says otherwise: a scratch folder that git
# ignores, so that a benchmark run never overwrites the committed tables in benchmarks/results
# (their commands in RESULTS.md name that folder explicitly).
DEFAULT_OUTPUT_DIR = "workdirs/benchmarks"
OUTPUT_DIR_HELP = (f"where the JSON and markdown go (default: {DEFAULT_OUTPUT_DIR}; the "
                   "committed tables are in benchmarks/results, written there only when named)")


def command_line(module: str, argv: list[str]) -> str:
  """The command that reproduces this run, with the XLA flags it ran under."""
  flags = os.environ.get("XLA_FLAGS")
  prefix = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
  return prefix + " ".join([f"python -m {module}", *map(shlex.quote, argv)])


def write_report(output_dir: str | pathlib.Path, name: str, report: dict[str, Any],
                 table: str) -> pathlib.Path:
  """Writes `<output_dir>/<name>.json` (the report) and `.md` (the table); returns the stem."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  stem = output_dir / name
  stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
  stem.with_suffix(".md").write_text(table + "\n")
  return stem


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
  """`argv` parsed by `parser`, its flags spelled with underscores as every act_jax command's.

  The dashed spellings these benchmarks took before (`--pgd_steps`) are read until the next
  release, with one notice (`command_line.underscored_flags`).
  """
  names = {action.dest for action in parser._actions}  # argparse has no public list
  return parser.parse_args(act_jax_command_line.underscored_flags(["", *argv], names)[1:])
