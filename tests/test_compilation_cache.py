"""Commands keep compiled XLA programs on disk (the CPU attack loops take minutes to compile)."""

import os
import subprocess
import sys

from helpers import REPO

PROBE = ("import jax; from act_jax import command_line; "
         "command_line.use_persistent_compilation_cache(); "
         "print(jax.config.jax_compilation_cache_dir)")


def cache_directory_in_a_fresh_process(tmp_path, **environment) -> str:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=str(tmp_path / "xdg"), **environment)
  result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.strip().splitlines()[-1]


def test_commands_cache_compiled_programs_under_the_user_cache(tmp_path):
  assert cache_directory_in_a_fresh_process(tmp_path) == str(tmp_path / "xdg" / "act_jax" /
                                                             "xla")


def test_a_cache_directory_the_user_chose_wins(tmp_path):
  chosen = str(tmp_path / "mine")
  assert cache_directory_in_a_fresh_process(tmp_path, JAX_COMPILATION_CACHE_DIR=chosen) == chosen
