"""`--config` takes a shipped recipe's name or any config file's path, from any working directory,
and a config file of one's own can build on the shipped recipes (`from configs import ...`).

The commands run from a temporary directory, without the repository on PYTHONPATH, so that only
the installed `configs` package can be found. Each stops at the dataset check, which comes after
the config is read, overridden and validated and before anything is written: a missing
Fashion-MNIST directory that the config names proves which config the command read.
"""

import os
import subprocess
import sys

import pytest

from act_jax import command_line

from helpers import REPO

RECIPES = ("cifar10", "cifar100", "cifar10_wrn", "fashion_mnist", "imagenet", "tiny")
USER_CONFIG = '''
from configs import base, tiny


def get_config(where="default"):
  config = tiny.get_config()
  assert config.seed == base.get_config().seed
  config.dataset.fashion_mnist_dir = "/nonexistent/user_config_" + where
  return config
'''


def run_elsewhere(module: str, cwd, *flags: str) -> subprocess.CompletedProcess:
  environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=cwd, capture_output=True,
                        text=True, env=environment, timeout=300)


def last_line(result: subprocess.CompletedProcess) -> str:
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


def test_the_shipped_recipes_are_listed_by_name():
  assert command_line.recipe_names() == RECIPES


def test_a_name_resolves_to_the_installed_recipe_and_a_path_stays_as_given(tmp_path):
  tiny = os.path.join(REPO, "configs", "tiny.py")
  assert os.path.samefile(command_line.config_file("tiny"), tiny)
  assert command_line.config_file("tiny:wide").endswith(os.path.join("configs", "tiny.py:wide"))
  own = tmp_path / "tiny"  # a file wins over a recipe of the same name
  own.write_text(USER_CONFIG)
  assert command_line.config_file(f"{own}:x") == f"{own}:x"
  with pytest.raises(command_line.ConfigFileError,
                     match=r"^--config=tinny: no such config file, nor a shipped recipe "
                           r"\(cifar10, cifar100, cifar10_wrn, fashion_mnist, imagenet, tiny\)$"):
    command_line.config_file("tinny")


@pytest.mark.parametrize("config_flags,directory", [
    ([], "given"),  # the default recipe, fashion_mnist
    (["--config=tiny"], "given"),
    ([f"--config={os.path.join(REPO, 'configs', 'fashion_mnist.py')}"], "given"),
    (["--config=USER"], "user_config_default"),
    (["--config=USER:from_flag"], "user_config_from_flag"),
])
def test_configs_are_read_from_any_working_directory(tmp_path, config_flags, directory):
  user_config = tmp_path / "my_config.py"
  user_config.write_text(USER_CONFIG)
  config_flags = [flag.replace("USER", str(user_config)) for flag in config_flags]
  overrides = ([f"--config.dataset.fashion_mnist_dir=/nonexistent/{directory}"]
               if directory == "given" else [])
  result = run_elsewhere("act_jax.main", tmp_path, *config_flags, f"--workdir={tmp_path / 'w'}",
                         *overrides)
  assert result.returncode == 2
  assert last_line(result).startswith(
      f"error: Fashion-MNIST not found in /nonexistent/{directory} ")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("module", ["act_jax.main", "act_jax.study"])
def test_an_unknown_config_gets_one_line_naming_the_flag_and_the_recipes(tmp_path, module):
  result = run_elsewhere(module, tmp_path, "--config=fashion-mnist", f"--workdir={tmp_path}/w")
  assert result.returncode == 2
  assert last_line(result) == (
      "error: --config=fashion-mnist: no such config file, nor a shipped recipe "
      f"({', '.join(RECIPES)})")
