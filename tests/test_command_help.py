"""Every command's `--help` lists its own flags and the shared multi-process ones (absl lists only
the flags of the module it runs, so a command defined elsewhere, or a shared flag, showed nothing
or hid under --helpfull)."""

import os
import subprocess
import sys

import pytest

from helpers import REPO

COMMANDS = {
    "act_jax.main": ("--config", "--workdir", "--compare_to"),
    "act_jax.evaluate": ("--workdir", "--attacks", "--eps", "--num-examples", "--split",
                         "--output", "--fab-steps", "--square-queries"),
    "act_jax.study": ("--config", "--workdir", "--methods", "--seeds", "--epochs", "--cascade",
                      "--fab_steps", "--square_queries"),
    "act_jax.analysis": ("--workdir", "--study", "--measures", "--num_examples"),
    "act_jax.export": ("--workdir", "--model", "--output", "--step"),
}
SINGLE_PROCESS = {"act_jax.export"}  # runs on one host: no multi-process flags


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_lists_the_commands_own_flags_and_the_shared_ones(module):
  result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
  assert "Traceback" not in result.stderr, result.stderr[-2000:]  # absl exits 1 after help
  listed = {line.split(":")[0].strip() for line in result.stdout.splitlines()
            if line.startswith("  --")}
  shared = () if module in SINGLE_PROCESS else ("--distributed", "--heartbeat_timeout")
  for flag in (*COMMANDS[module], *shared):
    assert flag in listed, f"{module} --help does not list {flag}: {sorted(listed)}"
