"""Shared fixtures: a tiny Fashion-MNIST-format dataset and a tiny ACT config around it."""

import jax
import pytest

from helpers import make_tiny_config, write_fake_fashion_mnist

# The tests compare float32 results with float32 references (NumPy, or PyTorch on the CPU), so
# matmuls and convolutions run in full float32 everywhere: GPUs would otherwise use TF32, whose
# 10-bit mantissa is far outside these tolerances.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory):
  return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_mnist"), 64, 32)


@pytest.fixture
def tiny_config(fake_fashion_mnist_dir, tmp_path):
  return make_tiny_config(fake_fashion_mnist_dir, str(tmp_path / "tfds"))
