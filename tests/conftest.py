"""Shared fixtures: a tiny Fashion-MNIST-format dataset and a tiny ACT config around it."""

import pytest

from helpers import make_tiny_config, write_fake_fashion_mnist


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory):
  return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_mnist"), 64, 32)


@pytest.fixture
def tiny_config(fake_fashion_mnist_dir, tmp_path):
  return make_tiny_config(fake_fashion_mnist_dir, str(tmp_path / "tfds"))
