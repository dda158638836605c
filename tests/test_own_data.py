"""One's own data (`dataset.name = npz` or `image_folder`): read into memory, its classes and
image shape taken from it, every mistake in it named in one line, and a run trained and
evaluated on it end to end from another working directory."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from act_jax.config_validation import ConfigError, validate_config
from act_jax.data import catalog, datasets, own_data

NUM_CLASSES, HEIGHT, WIDTH = 3, 16, 12


def learnable_split(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
  """float32 [count, H, W] images in [0, 1], each class brighter in its own band of rows."""
  labels = np.arange(count) % NUM_CLASSES
  images = rng.random((count, HEIGHT, WIDTH)).astype(np.float32) * 0.3
  for i, label in enumerate(labels):
    images[i, 5 * label:5 * label + 5] += 0.6
  return images, labels


def write_npz(path, **replaced) -> str:
  rng = np.random.default_rng(0)
  (x_train, y_train), (x_test, y_test) = learnable_split(rng, 32), learnable_split(rng, 16)
  arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  arrays.update(replaced)
  np.savez(path, **{name: array for name, array in arrays.items() if array is not None})
  return str(path)


def dataset_config(name: str, path: str) -> ml_collections.ConfigDict:
  own_data.read.cache_clear()
  return ml_collections.ConfigDict(dict(name=name, path=path, fashion_mnist_dir="",
                                        data_dir=None, image_size=None, validation_examples=0))


def test_an_npz_gives_its_classes_and_image_shape(tmp_path):
  config = dataset_config("npz", write_npz(tmp_path / "data.npz"))
  info = datasets.dataset_info(config)
  assert info == catalog.DatasetInfo("npz", NUM_CLASSES, (HEIGHT, WIDTH, 1), 32, 16)
  test = datasets.in_memory_split(config, "test")
  assert test.images.dtype == np.float32 and test.images.shape == (16, HEIGHT, WIDTH, 1)
  assert test.labels.dtype == np.int32


def test_an_image_folder_reads_as_the_same_arrays(tmp_path):
  rng = np.random.default_rng(1)
  for channels, mode in ((1, "L"), (3, "RGB")):
    root = tmp_path / mode
    expected = {}
    for split, count in (("train", 6), ("test", 3)):
      images = rng.integers(0, 256, (count, HEIGHT, WIDTH, channels), dtype=np.uint8)
      labels = np.arange(count) % NUM_CLASSES
      for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / split / ("ant", "bee", "cat")[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode).save(
            folder / f"{i:02d}.png")
      order = np.argsort(labels, kind="stable")  # read class by class
      expected[split] = images[order], labels[order]
    (root / "train" / "ant" / "notes.txt").write_text("not an image: ignored")
    config = dataset_config("image_folder", str(root))
    assert datasets.dataset_info(config) == catalog.DatasetInfo(
        "image_folder", NUM_CLASSES, (HEIGHT, WIDTH, channels), 6, 3)
    for split, (images, labels) in expected.items():
      stored = datasets.in_memory_split(config, split)
      np.testing.assert_array_equal(stored.images, images)
      np.testing.assert_array_equal(stored.labels, labels)


@pytest.mark.parametrize("replaced,message", [
    (dict(x_train=np.zeros((32, 3, HEIGHT, WIDTH))),
     r"x_train has shape \[32, 3, 16, 12\]: allowed NHWC \[n, height, width, 1 or 3\] or NHW "
     r"\[n, height, width\]; channels first\?"),
    (dict(x_test=np.full((16, HEIGHT, WIDTH), 255.0)),
     r"x_test is float64 with values in \[255, 255\]: float images must be in \[0, 1\]; "
     "divide by 255"),
    (dict(x_train=np.zeros((32, HEIGHT, WIDTH), np.int64)),
     r"x_train is int64: allowed uint8 in \[0, 255\] or float in \[0, 1\]"),
    (dict(x_test=np.zeros((16, 8, 8), np.uint8)),
     r"x_test has images of shape \[8, 8, 1\], x_train of \[16, 12, 1\]"),
    (dict(y_train=np.eye(NUM_CLASSES, dtype=np.int64)[np.arange(32) % NUM_CLASSES]),
     r"y_train has shape \[32, 3\]: allowed integer class indices \[n\]; one-hot\?"),
    (dict(y_train=np.zeros(32, np.float32)),
     r"y_train is float32: allowed integer class indices in \[0, num_classes\)"),
    (dict(y_test=np.arange(15)), "y_test has 15 labels for 16 images"),
    (dict(y_train=np.full(32, -1)), "y_train has label -1"),
    (dict(y_test=np.full(16, NUM_CLASSES)),
     r"y_test has label 3, a class that y_train lacks \(its labels are in \[0, 3\)"),
    (dict(y_test=None), "no array y_test"),
])
def test_each_mistake_in_an_npz_names_the_file_and_the_array(tmp_path, replaced, message):
  path = write_npz(tmp_path / "data.npz", **replaced)
  with pytest.raises(catalog.DatasetDamagedError, match=f"^{path}: {message}"):
    datasets.dataset_info(dataset_config("npz", path))


def test_a_missing_or_unreadable_file_is_named(tmp_path):
  missing = str(tmp_path / "nowhere.npz")
  with pytest.raises(catalog.DatasetMissingError, match=f"dataset.path = '{missing}': no such"):
    datasets.check_available(dataset_config("npz", missing))
  not_npz = tmp_path / "data.npz"
  not_npz.write_text("x_train")
  with pytest.raises(catalog.DatasetDamagedError, match=f"^{not_npz}: not an .npz"):
    datasets.dataset_info(dataset_config("npz", str(not_npz)))
  with pytest.raises(catalog.DatasetMissingError, match=r"no folder .*/train, .*/test"):
    datasets.check_available(dataset_config("image_folder", str(tmp_path)))


def test_own_data_needs_a_path(tiny_config):
  with tiny_config.unlocked():
    tiny_config.dataset.name = "npz"
  with pytest.raises(ConfigError, match=r"^config.dataset.path = None: dataset.name = npz "):
    validate_config(tiny_config, num_devices=1)


@pytest.mark.slow
def test_train_then_evaluate_on_an_npz_from_another_directory(tmp_path):
  """`python -m act_jax.main --config=tiny` on a tiny float NHW .npz of 3 classes, then
  `python -m act_jax.evaluate` on the run: the evaluator reproduces the run's own clean
  accuracy, and the models have one output per class of the data."""
  data = write_npz(tmp_path / "data.npz")
  workdir = tmp_path / "run"
  environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

  def run(*command: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, capture_output=True,
                            text=True, env=environment, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  run("act_jax.main", "--config=tiny", f"--workdir={workdir}", "--config.dataset.name=npz",
      f"--config.dataset.path={data}")
  output = tmp_path / "evaluation.json"
  run("act_jax.evaluate", f"--workdir={workdir}", "--attacks=clean,pgd2", "--eps_sweep=",
      "--large_eps=0.1", "--sweep_attack=fgsm", f"--output={output}")
  final = json.loads((workdir / "results.json").read_text())["final"]
  evaluation = json.loads(output.read_text())
  assert final["num_examples"] == evaluation["num_examples"] == 16
  for model in ("natural", "robust"):
    assert evaluation["accuracy"][model]["clean"] == final["accuracy"][model]["clean"]

  import act_jax
  images = datasets.in_memory_split(dataset_config("npz", data), "test").images
  assert act_jax.load_model(str(workdir))(images).shape == (16, NUM_CLASSES)
