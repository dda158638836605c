"""How benchmark scripts record a run: the command that reproduces it, and JSON + markdown files."""

import json
import os
import pathlib
import shlex
from typing import Any


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
