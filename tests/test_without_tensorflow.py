"""act_jax imports, trains, evaluates and loads runs on small datasets without TensorFlow.

GPU machines often have JAX but no TensorFlow; only ImageNet (and a first read of CIFAR) needs
it. The script runs in a subprocess in which `import tensorflow` raises ImportError.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, write_fake_fashion_mnist

# Modules that define absl flags, so each needs a process of its own.
COMMAND_LINES = ("act_jax.main", "act_jax.evaluate.cli", "act_jax.study.__main__",
                 "act_jax.prepare_data", "act_jax.export.cli",
                 "act_jax.plot_curves.__main__")
# tf.data's ImageNet augmentation (imported only by ImageNet's pipeline), the torch extra.
NOT_CHECKED = ("act_jax.data.augmentations", "act_jax.pytorch", "act_jax.evaluate.__main__",
               "act_jax.export.__main__")


@pytest.mark.parametrize("modules", ["library", *COMMAND_LINES])
def test_importing_any_module_imports_no_tensorflow(tmp_path, modules):
  """A stand-in `tensorflow` package first on the path: any import of it, lazy ones at import
  time included, puts it in `sys.modules`, whether or not TensorFlow is installed."""
  (tmp_path / "tensorflow").mkdir()
  (tmp_path / "tensorflow" / "__init__.py").write_text("")
  code = ("import importlib, pkgutil, sys, act_jax\n"
          f"names = {[modules] if modules in COMMAND_LINES else None!r} or [\n"
          "    m.name for m in pkgutil.walk_packages(act_jax.__path__, 'act_jax.')\n"
          f"    if not m.name.startswith({NOT_CHECKED + COMMAND_LINES!r})]\n"
          "for name in names:\n"
          "  importlib.import_module(name)\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
          "print(len([m for m in sys.modules if m.startswith('act_jax.')]))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO])))
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.split()[-1]) >= (40 if modules == "library" else 3)


@pytest.mark.slow
def test_train_evaluate_and_load_model_without_tensorflow(tmp_path):
  idx_dir = write_fake_fashion_mnist(tmp_path / "idx", 64, 32)
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tests", "scripts", "without_tensorflow.py"), idx_dir,
       str(tmp_path / "run")], capture_output=True, text=True, env=environment, cwd=REPO,
      timeout=900)
  assert result.returncode == 0, result.stderr[-5000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["imported"] == []
  assert set(summary["final"]) == {"natural", "robust"}
  assert set(summary["evaluated"]["robust"]) >= {"clean", "pgd3", "autoattack", "transfer"}
  assert summary["logits_shape"] == [2, 10]
