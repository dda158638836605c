"""Trains, evaluates and loads a tiny Fashion-MNIST run with TensorFlow made unimportable.

Usage: without_tensorflow.py IDX_DIR WORKDIR. Any `import tensorflow` (or TFDS) raises
ImportError here, as on a machine without them. Prints a JSON summary as its last line. Used by
tests/test_without_tensorflow.py.
"""

import json
import sys

for blocked in ("tensorflow", "tensorflow_datasets"):
  sys.modules[blocked] = None  # `import tensorflow` now raises ImportError

import act_jax  # noqa: E402
from act_jax import train  # noqa: E402
from act_jax.evaluate import cli  # noqa: E402

from helpers import make_tiny_config  # noqa: E402


def main(idx_dir: str, workdir: str) -> None:
  config = make_tiny_config(idx_dir, data_dir=None)
  results = train.train_and_evaluate(config, workdir)
  evaluation = cli.evaluate_run(cli.EvaluationRequest(
      workdir=workdir, attacks="clean,pgd3,apgd-ce,autoattack,transfer", apgd_steps=2,
      eps_sweep=[0.0, 0.1], show_progress=False))
  images = __import__("numpy").zeros((2, 28, 28, 1), "float32")
  logits = act_jax.load_model(workdir)(images)
  imported = sorted(name for name, module in sys.modules.items()
                    if module is not None and name.split(".")[0] in ("tensorflow",
                                                                     "tensorflow_datasets"))
  print(json.dumps({"final": results["final"]["accuracy"], "evaluated": evaluation["accuracy"],
                    "logits_shape": list(logits.shape), "imported": imported}))


if __name__ == "__main__":
  main(*sys.argv[1:])
