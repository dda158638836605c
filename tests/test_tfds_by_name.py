"""Any TFDS image classification dataset by name (`dataset.name = tfds`, `dataset.tfds_name`):
read through its supervised keys once, cached with its number of classes, served from the
cache without TensorFlow, and refused in one line, naming the field to change, where act-jax
cannot read or train on it.

Nothing can be downloaded here, so the datasets are tiny TFDS builders defined below and
prepared into the test's own data directory (TFDS's mock data would serve any split string).
"""

import functools
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from act_jax import workdir as workdir_lib
from act_jax.config_validation import ConfigError, validate_config
from act_jax.data import catalog, datasets, tfds_by_name, tfds_pipeline
from act_jax.errors import UserError

pytest.importorskip("tensorflow_datasets")

NUM_CLASSES, SHAPE, NUM_TRAIN, NUM_TEST = 3, (8, 6, 1), 12, 6


def pixels(index: int, dtype=np.uint8) -> np.ndarray:
  return np.full(SHAPE, 17 * index % 250, dtype)


@functools.cache
def builders() -> dict[str, type]:
  """Three TFDS builders, registered once per process under their snake-case names."""
  import tensorflow_datasets as tfds

  def make(name: str, splits: dict[str, int], dtype) -> type:
    def _info(self):
      return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"),
                                   features=tfds.features.FeaturesDict({
                                       "image": tfds.features.Image(shape=SHAPE, dtype=dtype),
                                       "label": tfds.features.ClassLabel(
                                           num_classes=NUM_CLASSES)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split, count) for split, count in splits.items()}

    def _generate_examples(self, split, count):
      for i in range(count):
        yield f"{split}{i}", {"image": pixels(i, dtype), "label": i % NUM_CLASSES}

    return type(name, (tfds.core.GeneratorBasedBuilder,), dict(
        VERSION=tfds.core.Version("1.0.0"), _info=_info, _split_generators=_split_generators,
        _generate_examples=_generate_examples))

  return {"tiny_shapes": make("TinyShapes", {"train": NUM_TRAIN, "test": NUM_TEST}, np.uint8),
          "tiny_train_only": make("TinyTrainOnly", {"train": NUM_TRAIN}, np.uint8),
          "tiny_deep_images": make("TinyDeepImages", {"train": 4, "test": 4}, np.uint16)}


@pytest.fixture
def data_dir(tmp_path):
  """A data directory with `tiny_shapes` prepared in it."""
  builders()["tiny_shapes"](data_dir=str(tmp_path)).download_and_prepare()
  return tmp_path


def tfds_config(data_dir, tfds_name: str = "tiny_shapes", **splits: str
                ) -> ml_collections.ConfigDict:
  datasets._tfds_split.cache_clear()
  return ml_collections.ConfigDict(dict(
      name="tfds", tfds_name=tfds_name, data_dir=str(data_dir), fashion_mnist_dir="",
      image_size=None, validation_examples=0, path=None,
      tfds_train_split=splits.get("train"), tfds_test_split=splits.get("test")))


def test_a_tfds_dataset_is_read_once_then_served_from_its_cache(data_dir, monkeypatch):
  config = tfds_config(data_dir)
  info = datasets.dataset_info(config)
  assert info == catalog.DatasetInfo("tfds", NUM_CLASSES, SHAPE, NUM_TRAIN, NUM_TEST)
  test = datasets.in_memory_split(config, "test")
  assert test.images.dtype == np.uint8 and test.labels.dtype == np.int32
  assert sorted(test.labels.tolist()) == sorted(i % NUM_CLASSES for i in range(NUM_TEST))
  assert sorted(int(image[0, 0, 0]) for image in test.images) == sorted(
      int(pixels(i)[0, 0, 0]) for i in range(NUM_TEST))
  for split in ("train", "test"):
    assert os.path.exists(catalog.tfds_by_name_cache_path(str(data_dir), "tiny_shapes", split))
  # With TFDS out of reach, the cache alone serves both splits.
  monkeypatch.setattr(tfds_by_name, "checked_builder", None)
  config = tfds_config(data_dir)
  datasets.check_available(config)
  assert datasets.dataset_info(config) == info
  np.testing.assert_array_equal(datasets.in_memory_split(config, "test").images, test.images)


def test_the_splits_are_chosen_in_tfds_split_syntax(data_dir):
  whole = datasets.in_memory_split(tfds_config(data_dir), "train")
  config = tfds_config(data_dir, train="train[:8]", test="train[8:]")
  info = datasets.dataset_info(config)
  assert (info.num_train, info.num_test) == (8, NUM_TRAIN - 8)
  np.testing.assert_array_equal(datasets.in_memory_split(config, "train").labels,
                                whole.labels[:8])
  np.testing.assert_array_equal(datasets.in_memory_split(config, "test").labels,
                                whole.labels[8:])


def test_cache_names_keep_apart_splits_that_read_alike():
  paths = {catalog.tfds_by_name_cache_path("/d", "mnist", split)
           for split in ("train[:50%]", "train[:50]", "train_50")}
  assert len(paths) == 3
  assert all(os.path.basename(p).startswith("tfds_mnist_train_50") for p in paths)


@pytest.mark.parametrize("splits,message", [
    (dict(test="validation"), r"^dataset.tfds_test_split = 'validation': cannot read this split "
                              r"of tiny_shapes \(its splits: "),
    (dict(train="train[:0]"), r"^dataset.tfds_train_split = 'train\[:0\]': cannot read this"),
    (dict(train="train[:5"), r"^dataset.tfds_train_split = 'train\[:5': cannot read this"),
])
def test_a_split_tfds_cannot_read_names_its_field(data_dir, splits, message):
  with pytest.raises(UserError, match=message) as raised:
    datasets.dataset_info(tfds_config(data_dir, **splits))
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name,message", [
    ("not_a_dataset_xyz", r"^dataset.tfds_name = 'not_a_dataset_xyz': TFDS has no such "),
    ("tiny_shapes/no_config", r"^dataset.tfds_name = 'tiny_shapes/no_config': TFDS has no such "),
    ("tiny_shapes:9.9.9", r"^dataset.tfds_name = 'tiny_shapes:9.9.9': TFDS has no such "),
])
def test_a_name_tfds_lacks_is_refused_in_one_line(tmp_path, name, message):
  builders()
  with pytest.raises(tfds_pipeline.DatasetNotPreparedError, match=message) as raised:
    datasets.check_available(tfds_config(tmp_path, name))
  assert "\n" not in str(raised.value)


def test_an_unprepared_dataset_names_the_command_that_prepares_it(tmp_path):
  builders()
  with pytest.raises(tfds_pipeline.DatasetNotPreparedError,
                     match="^tiny_shapes is not prepared .* `python -m act_jax.prepare_data "
                           f"--dataset=tiny_shapes --data_dir={tmp_path}`"):
    datasets.check_available(tfds_config(tmp_path))


def test_a_dataset_act_jax_cannot_train_on_is_refused_before_its_download(tmp_path):
  builders()
  with pytest.raises(catalog.DatasetDamagedError,
                     match=r"^--dataset = tiny_deep_images: its images are uint16; allowed uint8"):
    tfds_by_name.prepare("tiny_deep_images", str(tmp_path))
  assert not (tmp_path / "tiny_deep_images").exists()


def test_prepare_caches_the_splits_there_are(tmp_path):
  builders()
  assert tfds_by_name.prepare("tiny_train_only", str(tmp_path)) == ["train"]
  assert os.path.exists(catalog.tfds_by_name_cache_path(str(tmp_path), "tiny_train_only",
                                                        "train"))


def test_a_damaged_cache_is_named_with_what_is_wrong(data_dir):
  config = tfds_config(data_dir)
  datasets.dataset_info(config)
  cache = catalog.tfds_by_name_cache_path(str(data_dir), "tiny_shapes", "test")
  with np.load(cache) as arrays:
    images, labels = arrays["image"], arrays["label"].copy()
  labels[0] = NUM_CLASSES
  np.savez(cache, image=images, label=labels, num_classes=np.int64(NUM_CLASSES))
  with pytest.raises(catalog.DatasetDamagedError,
                     match=rf"^{cache} is damaged \(labels in \[0, 3\], outside \[0, 3\)"):
    datasets.dataset_info(tfds_config(data_dir))
  with open(cache, "wb") as f:
    f.write(b"truncated")
  with pytest.raises(catalog.DatasetDamagedError, match=rf"^{cache} is damaged \("):
    datasets.dataset_info(tfds_config(data_dir))


def test_a_tfds_run_needs_the_name(tiny_config):
  with tiny_config.unlocked():
    tiny_config.dataset.name = "tfds"
  with pytest.raises(ConfigError, match=r"^config.dataset.tfds_name = None: dataset.name = tfds"):
    validate_config(tiny_config, num_devices=1)


def test_a_run_recorded_before_the_tfds_fields_resumes(tiny_config, tmp_path):
  """The fields are placeholders: a config.json without them is the same recipe."""
  recorded = tiny_config.to_dict()
  for field in ("tfds_name", "tfds_train_split", "tfds_test_split"):
    del recorded["dataset"][field]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  assert workdir_lib.result_differences(str(tmp_path), tiny_config) == {}


@pytest.mark.slow
def test_train_on_a_cached_tfds_dataset_without_tensorflow(data_dir):
  """The cache trains `python -m act_jax.main --config=tiny` in a process where importing
  TensorFlow fails: later runs need none."""
  datasets.dataset_info(tfds_config(data_dir))
  blocker = data_dir / "no_tensorflow"
  (blocker / "tensorflow").mkdir(parents=True)
  (blocker / "tensorflow" / "__init__.py").write_text(
      "raise ImportError('TensorFlow is blocked in this test')\n")
  environment = {**os.environ, "PYTHONPATH": str(blocker)}
  workdir = data_dir / "run"
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.main", "--config=tiny", f"--workdir={workdir}",
       "--config.dataset.name=tfds", "--config.dataset.tfds_name=tiny_shapes",
       f"--config.dataset.data_dir={data_dir}", "--config.train.batch_size=4",
       "--config.eval.batch_size=4"],
      cwd=data_dir, capture_output=True, text=True, env=environment, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((workdir / "results.json").read_text())["final"]
  assert final["num_examples"] == NUM_TEST
