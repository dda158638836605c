"""Any TFDS image classification dataset by name (`dataset.name = tfds`, `dataset.tfds_name`):
read through its supervised keys once, cached with its number of classes, served from the
cache without TensorFlow, and refused in one line where act-jax cannot train on it.

Nothing can be downloaded here, so the datasets come from `tfds.testing.mock_data`.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from act_jax.config_validation import ConfigError, validate_config
from act_jax.data import catalog, datasets, tfds_pipeline
from act_jax.errors import UserError

from helpers import mock_prepared_tfds

pytest.importorskip("tensorflow_datasets")


def tfds_config(data_dir, tfds_name: str = "mnist", **splits: str) -> ml_collections.ConfigDict:
  datasets._tfds_split.cache_clear()
  return ml_collections.ConfigDict(dict(
      name="tfds", tfds_name=tfds_name, data_dir=str(data_dir), fashion_mnist_dir="",
      image_size=None, validation_examples=0, path=None,
      tfds_train_split=splits.get("train", "train"), tfds_test_split=splits.get("test", "test")))


def test_a_tfds_dataset_is_read_once_then_served_from_its_cache(tmp_path):
  config = tfds_config(tmp_path)
  with mock_prepared_tfds(num_examples=24):
    info = datasets.dataset_info(config)
    first = datasets.in_memory_split(config, "test")
  # MNIST's label feature says 10 classes; its images are 28x28 gray.
  assert info == catalog.DatasetInfo("tfds", 10, (28, 28, 1), 24, 24)
  assert first.images.dtype == np.uint8 and first.labels.dtype == np.int32
  for split in ("train", "test"):
    assert os.path.exists(catalog.tfds_by_name_cache_path(str(tmp_path), "mnist", split))
  # No mock now: the dataset is not prepared in tmp_path, and the cache serves both splits.
  config = tfds_config(tmp_path)
  datasets.check_available(config)
  assert datasets.dataset_info(config) == info
  np.testing.assert_array_equal(datasets.in_memory_split(config, "test").images, first.images)


def test_the_splits_read_are_those_the_config_names(tmp_path, monkeypatch):
  """(TFDS's mock serves every split alike, so this checks which splits are asked for.)"""
  asked = []
  real = tfds_pipeline.tfds_arrays
  monkeypatch.setattr(tfds_pipeline, "tfds_arrays",
                      lambda name, split, data_dir: asked.append(split) or real(name, split,
                                                                                data_dir))
  config = tfds_config(tmp_path, train="train[:90%]", test="train[90%:]")
  with mock_prepared_tfds(num_examples=8):
    datasets.dataset_info(config)
  assert sorted(asked) == ["train[90%:]", "train[:90%]"]
  for split in asked:
    assert os.path.exists(catalog.tfds_by_name_cache_path(str(tmp_path), "mnist", split))


def test_cache_names_keep_apart_splits_that_read_alike():
  paths = {catalog.tfds_by_name_cache_path("/d", "mnist", split)
           for split in ("train[:50%]", "train[:50]", "train_50")}
  assert len(paths) == 3
  assert all(os.path.basename(p).startswith("tfds_mnist_train_50") for p in paths)


def test_an_unknown_name_and_an_unprepared_dataset_are_named(tmp_path):
  with pytest.raises(UserError, match=r"^not_a_dataset_xyz: TFDS has no dataset of this name"):
    datasets.check_available(tfds_config(tmp_path, "not_a_dataset_xyz"))
  with pytest.raises(tfds_pipeline.DatasetNotPreparedError,
                     match="^mnist is not prepared .* `python -m act_jax.prepare_data "
                           f"--dataset=mnist --data_dir={tmp_path}`"):
    datasets.check_available(tfds_config(tmp_path))


def test_a_dataset_of_varying_image_sizes_is_refused_in_one_line(tmp_path):
  with mock_prepared_tfds(num_examples=4), pytest.raises(
      catalog.DatasetDamagedError,
      match=r"^dataset.tfds_name = oxford_flowers102: its images have shape \[None, None, 3\]"):
    datasets.dataset_info(tfds_config(tmp_path, "oxford_flowers102"))


def test_a_tfds_run_needs_the_name(tiny_config):
  with tiny_config.unlocked():
    tiny_config.dataset.name = "tfds"
  with pytest.raises(ConfigError, match=r"^config.dataset.tfds_name = None: dataset.name = tfds"):
    validate_config(tiny_config, num_devices=1)


@pytest.mark.slow
def test_train_on_a_cached_tfds_dataset_without_tensorflow(tmp_path):
  """The cache written under the mock trains `python -m act_jax.main --config=tiny` in a process
  where importing TensorFlow fails: later runs need none."""
  with mock_prepared_tfds(num_examples=32):
    datasets.dataset_info(tfds_config(tmp_path))
  blocker = tmp_path / "no_tensorflow"
  (blocker / "tensorflow").mkdir(parents=True)
  (blocker / "tensorflow" / "__init__.py").write_text(
      "raise ImportError('TensorFlow is blocked in this test')\n")
  environment = {**os.environ, "PYTHONPATH": str(blocker)}
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.main", "--config=tiny", f"--workdir={workdir}",
       "--config.dataset.name=tfds", "--config.dataset.tfds_name=mnist",
       f"--config.dataset.data_dir={tmp_path}"],
      cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((workdir / "results.json").read_text())["final"]
  assert final["num_examples"] == 32
