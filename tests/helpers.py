"""Helpers that several test modules share; fixtures live in conftest.py and use these."""

import functools
import gzip
import json
import os
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from act_jax import optimizers, parallel
from act_jax.train_step import ACTHyperparams, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
HAS_REAL_FASHION_MNIST = os.path.exists(
    os.path.join(REAL_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))
NEEDS_REAL_FASHION_MNIST = "needs `apt-get install dataset-fashion-mnist` (.ci/run installs it)"
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def write_fake_fashion_mnist(directory, num_train: int, num_test: int, seed: int = 0) -> str:
  """Writes Fashion-MNIST IDX .gz files of random 28x28 images with learnable labels.

  Each label's images are brighter in one horizontal band, so a model can fit them quickly.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for split, count in (("train", num_train), ("test", num_test)):
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = rng.integers(0, 100, (count, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 * label:2 * label + 4] += 150
    images_name, labels_name = IDX_FILES[split]
    with gzip.open(os.path.join(directory, images_name), "wb") as f:
      f.write(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    with gzip.open(os.path.join(directory, labels_name), "wb") as f:
      f.write(struct.pack(">II", 2049, count) + labels.tobytes())
  return str(directory)


def make_tiny_config(fashion_mnist_dir: str, data_dir: str) -> ml_collections.ConfigDict:
  """The Fashion-MNIST config shrunk to seconds: 4 steps an epoch, 2 epochs, 2-step attacks."""
  from configs import fashion_mnist
  config = fashion_mnist.get_config()
  config.dataset.fashion_mnist_dir = fashion_mnist_dir
  config.dataset.data_dir = data_dir
  config.model.base_width = 4
  config.attack.num_steps = 2
  config.eval.num_steps = 2
  config.train.batch_size = 16
  config.train.epochs = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.optim.lr_decay_epochs = (1,)
  config.eval.batch_size = 16
  return config


def np_log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def assert_trees_close(actual, expected, **tolerances) -> None:
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tolerances), actual, expected)


def with_model(state, model):
  """`state` with both models' `apply_fn` replaced by `model.apply` (e.g. another dtype)."""
  return state.replace(natural=state.natural.replace(apply_fn=model.apply),
                       robust=state.robust.replace(apply_fn=model.apply))


def run_one_device_step(state, batch, rng, *, hp: ACTHyperparams,
                        optim_config: ml_collections.ConfigDict, steps_per_epoch: int = 10):
  """One ACT step through the training path (shard_map in jit on a one-device mesh).

  The state is copied first, since the step donates it and callers keep comparing against it.
  """
  step = parallel.distribute_train_step(
      functools.partial(train_step, hp=hp,
                        learning_rate_fn=optimizers.learning_rate_schedule(optim_config,
                                                                           steps_per_epoch)),
      parallel.make_mesh(jax.devices()[:1]))
  return step(jax.tree.map(jnp.copy, state), batch, rng)


def run_script_on_eight_devices(script: str):
  """Runs tests/scripts/<script> with 8 simulated CPU devices; the JSON of its last line.

  A subprocess, since the device count is fixed when jax is imported.
  """
  environment = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                     PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts", script)],
                          capture_output=True, text=True, env=environment, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])
