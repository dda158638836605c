"""Shared fixtures: a tiny Fashion-MNIST-format dataset and a tiny ACT config around it."""

import atexit
import os
import shutil
import tempfile

import jax
import pytest

from helpers import make_tiny_config, write_fake_fashion_mnist

# The tests compare float32 results with float32 references (NumPy, or PyTorch on the CPU), so
# matmuls and convolutions run in full float32 everywhere: GPUs would otherwise use TF32, whose
# 10-bit mantissa is far outside these tolerances.
jax.config.update("jax_default_matmul_precision", "highest")

# One XLA compilation cache for the whole session, shared with every subprocess the tests start
# (they inherit os.environ): the command-line tests run the same tiny programs in many fresh
# processes, and a cache hit turns a 35 s start into about 10 s. A hit returns the very
# executable a compile would build, so no result changes; the cache dies with the session.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="act_jax_tests_xla_cache_")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_COMPILATION_CACHE,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def fake_fashion_mnist_dir(tmp_path_factory):
  return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_mnist"), 64, 32)


@pytest.fixture
def tiny_config(fake_fashion_mnist_dir, tmp_path):
  return make_tiny_config(fake_fashion_mnist_dir, str(tmp_path / "tfds"))
