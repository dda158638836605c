"""Helpers that several test modules share; fixtures live in conftest.py and use these."""

import contextlib
import functools
import gzip
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from act_jax import optimizers, parallel
from act_jax.methods import act

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
HAS_REAL_FASHION_MNIST = os.path.exists(
    os.path.join(REAL_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))
NEEDS_REAL_FASHION_MNIST = "needs `apt-get install dataset-fashion-mnist` (.ci/run installs it)"
BN_MOMENTUM = 0.9  # flax convention: new = 0.9 * old + 0.1 * batch statistic
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
  """`configs/tiny.py` on a test's own data (4 steps an epoch on the fake Fashion-MNIST)."""
  from configs import tiny
  config = tiny.get_config()
  config.dataset.fashion_mnist_dir = fashion_mnist_dir
  config.dataset.data_dir = data_dir
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


def run_one_device_step(state, batch, rng, *, hp, optim_config: ml_collections.ConfigDict,
                        steps_per_epoch: int = 10, step_fn=act.train_step):
  """One train step (ACT's unless `step_fn` says otherwise) through the training path:
  shard_map in jit on a one-device mesh.

  The state is copied first, since the step donates it and callers keep comparing against it.
  """
  step = parallel.distribute_train_step(
      functools.partial(step_fn, hp=hp,
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


# Parity with PyTorch: the same variables and batches in both frameworks.


def random_variables(model, image_shape: tuple[int, int, int], seed: int):
  """Random params and running statistics with the structure `model.init` gives.

  Non-trivial running statistics make eval-mode (attack) and train-mode BN really differ, and
  random BN scales matter since the ImageNet ResNet zero-initialises some. He-scaled kernels
  keep activations of order one. (Compiling flax's initialisers would also take ~10 s on CPU.)
  """
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, *image_shape)))
  rng = np.random.default_rng(seed)

  def sample(path, leaf):
    name = path[-1].key
    if name == "kernel":
      values = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      values = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, mean
      values = rng.normal(0.0, 0.2, leaf.shape)
    return jnp.asarray(values, jnp.float32)

  return jax.tree_util.tree_map_with_path(sample, shapes)


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def nchw(array):
  """An NHWC array as an NCHW torch tensor (torch is imported only by the tests that use it)."""
  import torch
  return torch.from_numpy(np.array(np.asarray(array).transpose(0, 3, 1, 2)))


def nhwc(tensor) -> np.ndarray:
  return tensor.detach().cpu().numpy().transpose(0, 2, 3, 1)


def record_bn_sample_counts(model) -> dict[str, int]:
  """Fills, per flax BN path, the values per channel (n) of the module's last train-mode pass."""
  import torch
  counts: dict[str, int] = {}

  def hook(path, module, inputs, _):
    if module.training:
      counts[path] = inputs[0].numel() // inputs[0].shape[1]

  for path, layer in model.flax_layout().items():
    if isinstance(layer, torch.nn.BatchNorm2d):
      layer.register_forward_hook(functools.partial(hook, path))
  return counts


def layer_stats(tree, path: str):
  """The subtree of a flax-layout tree at a module path such as "BasicBlock_0/BatchNorm_1"."""
  return functools.reduce(lambda subtree, name: subtree[name], path.split("/"), tree)


def unbiased_running_var(old_var, flax_new_var, n: int, updates: int = 1):
  """The running variance torch stores where flax stored `flax_new_var` from `old_var`.

  With flax momentum m, one update stores m v + (1 - m) s^2 (biased batch variance s^2) in flax
  and m v + (1 - m) s^2 n / (n - 1) in torch: the same update with its new term rescaled. After
  `updates` train-mode passes of n values per channel each, what is carried over from `old_var`
  is m^updates v, and everything added since is rescaled by n / (n - 1).
  """
  carried = BN_MOMENTUM**updates * old_var
  return carried + (flax_new_var - carried) * n / (n - 1)


def relative_difference(actual, expected) -> float:
  return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-12)))


@contextlib.contextmanager
def mock_prepared_tfds(num_examples: int) -> Iterator[None]:
  """`tfds.testing.mock_data`, whose datasets also count as prepared: act_jax refuses to read a
  dataset that is not (it never downloads or builds one during a run)."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
      tfds.core.DatasetBuilder, "is_prepared", return_value=True):
    yield


def steep_mlp_problem() -> tuple:
  """(logits_fn, images [12, 1, 2, 3], keys): a steep 5-class MLP whose attacks need many
  steps, for the tests that compare an attack run in parts with the attack in one call."""
  rng = np.random.default_rng(1)
  w1 = jnp.asarray(rng.normal(size=(6, 16)) * 4, jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  logits_fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2
  images = jnp.asarray(rng.uniform(0.1, 0.9, size=(12, 1, 2, 3)), jnp.float32)
  return logits_fn, images, jax.random.split(jax.random.PRNGKey(5), 12)
