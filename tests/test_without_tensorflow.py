"""act_jax imports, trains, evaluates and loads runs on small datasets without TensorFlow.

GPU machines often have JAX but no TensorFlow; only ImageNet (and a first read of CIFAR) needs
it. The script runs in a subprocess in which `import tensorflow` raises ImportError.
"""

import json
import os
import subprocess
import sys

from helpers import REPO, write_fake_fashion_mnist


def test_import_does_not_import_tensorflow():
  code = ("import sys; import act_jax.train, act_jax.evaluate.cli, act_jax.study.runner; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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
