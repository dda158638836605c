"""Shared fixtures: a tiny Fashion-MNIST-format dataset and a tiny ACT config around it."""

import gzip
import os
import struct

import numpy as np
import pytest

REAL_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
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


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory):
  return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_mnist"), 64, 32)


def make_tiny_config(fashion_mnist_dir: str, data_dir: str):
  """The Fashion-MNIST config shrunk to seconds: 4 steps an epoch, 2 epochs, 2-step attacks."""
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
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


@pytest.fixture
def tiny_config(fake_fashion_mnist_dir, tmp_path):
  return make_tiny_config(fake_fashion_mnist_dir, str(tmp_path / "tfds"))
