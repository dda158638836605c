"""Input pipeline: shapes and ranges, resumable determinism, per-process splits, lazy TF.

CIFAR and ImageNet cannot be downloaded here, so they run on `tfds.testing.mock_data`; those
tests pass their own `data_dir` so that the in-memory cache (keyed by it) never serves another
test's mock data. Fashion-MNIST runs on a real TFDS dataset built from tiny fake IDX files.
"""

import gzip
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from act_jax.data import augmentations, fashion_mnist_idx, input_pipeline

from helpers import write_fake_fashion_mnist

NUM_TRAIN, NUM_TEST = 50, 20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> dict[str, str]:
  """kwargs that point the pipeline at a prepared 50/20-example fake Fashion-MNIST."""
  idx_dir = write_fake_fashion_mnist(tmp_path_factory.mktemp("idx"), NUM_TRAIN, NUM_TEST)
  kwargs = {"fashion_mnist_dir": idx_dir, "data_dir": str(tmp_path_factory.mktemp("tfds"))}
  input_pipeline.dataset_info("fashion_mnist", **kwargs)  # builds the TFDS dataset once
  return kwargs


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(iterator, count))


def pixels(image: np.ndarray) -> bytes:
  """An example's identity: its pixels, which are distinct in random fake data."""
  return np.round(np.asarray(image, np.float32) * 255).astype(np.uint8).tobytes()


def real_examples(batches) -> list[bytes]:
  return [pixels(image) for batch in batches
          for image, real in zip(batch["image"], batch.get("mask", np.ones(len(batch["image"]))),
                                 strict=True)
          if real]


def assert_batches_equal(actual, expected) -> None:
  assert len(actual) == len(expected)
  for got, want in zip(actual, expected, strict=True):
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def check_batch(batch, batch_size: int, shape, num_classes: int, masked: bool = False) -> None:
  assert set(batch) == ({"image", "label", "mask"} if masked else {"image", "label"})
  assert batch["image"].shape == (batch_size, *shape) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
  assert batch["label"].shape == (batch_size,) and batch["label"].dtype == np.int32
  assert ((batch["label"] >= 0) & (batch["label"] < num_classes)).all()
  if masked:
    assert batch["mask"].shape == (batch_size,) and batch["mask"].dtype == np.float32
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}


def test_import_does_not_import_tensorflow():
  code = "import act_jax.data.input_pipeline, sys; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_unknown_dataset_names_the_valid_ones():
  with pytest.raises(ValueError, match="fashion_mnist, cifar10, cifar100, imagenet2012"):
    input_pipeline.dataset_info("mnist")


def test_idx_reader_rejects_wrong_magic_naming_the_file(tmp_path):
  path = str(tmp_path / "train-images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: .* 2049, expected 2051"):
    fashion_mnist_idx.read_idx(path, fashion_mnist_idx.IMAGE_MAGIC)


def test_fashion_mnist_idx_builder_holds_the_idx_examples(fashion):
  info = input_pipeline.dataset_info("fashion_mnist", **fashion)
  assert info == input_pipeline.DatasetInfo("fashion_mnist", 10, (28, 28, 1), NUM_TRAIN, NUM_TEST)
  builder = fashion_mnist_idx.FashionMnistIdx(data_dir=fashion["data_dir"])
  for split in ("train", "test"):
    stored = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = fashion_mnist_idx.read_split(fashion["fashion_mnist_dir"], split)
    assert stored["image"].shape == (len(labels), 28, 28, 1)
    assert sorted(zip(map(bytes, stored["image"]), stored["label"], strict=True)) == sorted(
        zip(map(bytes, images[..., None]), labels, strict=True))


def test_fashion_mnist_batches(fashion):
  assert input_pipeline.steps_per_epoch("fashion_mnist", global_batch_size=8, **fashion) == 6
  train = take(input_pipeline.train_batches("fashion_mnist", per_process_batch_size=8, seed=0,
                                            **fashion), 6)
  for batch in train:
    check_batch(batch, 8, (28, 28, 1), 10)
  epoch = real_examples(train)
  assert len(set(epoch)) == 48  # one epoch: 48 of the 50 examples, none twice
  test_images, _ = fashion_mnist_idx.read_split(fashion["fashion_mnist_dir"], "test")
  evaluation = list(input_pipeline.eval_batches("fashion_mnist", per_process_batch_size=8,
                                                **fashion))
  assert len(evaluation) == 3
  for batch in evaluation:
    check_batch(batch, 8, (28, 28, 1), 10, masked=True)
  assert [batch["mask"].sum() for batch in evaluation] == [8, 8, 4]
  assert sorted(real_examples(evaluation)) == sorted(pixels(image / 255) for image in test_images)


@pytest.mark.parametrize("start_step", [3, 5, 6, 13])
def test_resuming_yields_what_an_uninterrupted_run_yields(fashion, start_step):
  def batches(start):
    return input_pipeline.train_batches("fashion_mnist", per_process_batch_size=8, seed=3,
                                        start_step=start, **fashion)
  uninterrupted = take(batches(0), 16)
  assert_batches_equal(take(batches(start_step), 16 - start_step), uninterrupted[start_step:])


def test_seeds_and_epochs_shuffle_differently(fashion):
  def epoch(seed, start_step=0):
    return real_examples(take(input_pipeline.train_batches(
        "fashion_mnist", per_process_batch_size=8, seed=seed, start_step=start_step, **fashion), 6))
  first = epoch(0)
  assert first != epoch(1)
  assert first != epoch(0, start_step=6)  # the next epoch is reshuffled


@pytest.mark.parametrize("start_step", [0, 7])
def test_processes_split_each_global_batch(fashion, start_step):
  """Two processes' parts of every batch, side by side, are the one-process batch."""
  def batches(index, count):
    return take(input_pipeline.train_batches(
        "fashion_mnist", per_process_batch_size=8 // count, seed=0, start_step=start_step,
        process_index=index, process_count=count, **fashion), 8)
  parts = [batches(index, 2) for index in (0, 1)]
  joined = [{key: np.concatenate([first[key], second[key]]) for key in first}
            for first, second in zip(*parts, strict=True)]
  assert_batches_equal(joined, batches(0, 1))
  rest_of_epoch = 6 - start_step % 6  # 6 global batches an epoch; no example twice in one
  assert not (set(real_examples(parts[0][:rest_of_epoch]))
              & set(real_examples(parts[1][:rest_of_epoch])))


def test_processes_split_augmented_cifar_batches(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    def batches(index, count):
      return take(input_pipeline.train_batches(
          "cifar10", per_process_batch_size=8 // count, seed=2, process_index=index,
          process_count=count, data_dir=str(tmp_path)), 4)
    parts = [batches(index, 2) for index in (0, 1)]
    whole = batches(0, 1)
  joined = [{key: np.concatenate([first[key], second[key]]) for key in first}
            for first, second in zip(*parts, strict=True)]
  assert_batches_equal(joined, whole)


@pytest.mark.parametrize("num_examples", [None, 9, 15, 1000])
def test_processes_evaluate_every_example_exactly_once(fashion, num_examples):
  runs = [list(input_pipeline.eval_batches(
      "fashion_mnist", per_process_batch_size=4, num_examples=num_examples, process_index=index,
      process_count=2, **fashion)) for index in (0, 1)]
  assert len(runs[0]) == len(runs[1])  # a collective eval step never waits for a process
  whole = list(input_pipeline.eval_batches("fashion_mnist", per_process_batch_size=8,
                                           num_examples=num_examples, **fashion))
  assert len(whole) == len(runs[0])
  # The same global batches as one process.
  for first, second, joined in zip(*runs, whole, strict=True):
    for key in joined:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), joined[key])
  expected = real_examples(whole)
  assert len(expected) == min(num_examples or NUM_TEST, NUM_TEST)
  assert sorted(real_examples(runs[0]) + real_examples(runs[1])) == sorted(expected)


def test_fashion_mnist_falls_back_to_tfds_without_idx_files(tmp_path, monkeypatch):
  kwargs = {"fashion_mnist_dir": str(tmp_path / "missing"), "data_dir": str(tmp_path)}
  with tfds.testing.mock_data(num_examples=12):
    assert input_pipeline.dataset_info("fashion_mnist", **kwargs).num_train == 12

  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
    input_pipeline.dataset_info("fashion_mnist", **kwargs)


def test_cifar_augmentation_is_a_reflect_padded_crop_and_flip():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  augmented = augmentations.cifar_train(images, np.array([1, 2])).numpy()
  padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
  crops = set()
  for index, image in enumerate(augmented):
    matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)
               if np.array_equal(image, (lambda crop: crop[:, ::-1] if flip else crop)(
                   padded[index, top:top + 8, left:left + 8]))]
    assert matches, f"image {index} is not a flipped or unflipped crop of the padded image"
    crops.add(matches[0])
  assert len(crops) > 4  # each image draws its own crop and flip


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_batches(tmp_path, name, num_classes):
  with tfds.testing.mock_data(num_examples=20):
    info = input_pipeline.dataset_info(name, data_dir=str(tmp_path))
    assert (info.num_classes, info.image_shape) == (num_classes, (32, 32, 3))
    train = take(input_pipeline.train_batches(name, per_process_batch_size=8, seed=0,
                                              data_dir=str(tmp_path)), 3)
    evaluation = list(input_pipeline.eval_batches(name, per_process_batch_size=8,
                                                  data_dir=str(tmp_path)))
  for batch in train:
    check_batch(batch, 8, (32, 32, 3), num_classes)
  for batch in evaluation:
    check_batch(batch, 8, (32, 32, 3), num_classes, masked=True)
  assert [batch["mask"].sum() for batch in evaluation] == [8, 8, 4]
  unaugmented = set(real_examples(evaluation))  # mock data: every split holds the same images
  assert not set(real_examples(train)) <= unaugmented  # training images are augmented


@pytest.mark.parametrize("start_step", [2, 7])
def test_augmented_resume_matches_across_epochs(tmp_path, start_step):
  with tfds.testing.mock_data(num_examples=20):  # 5 steps an epoch
    def batches(start):
      return input_pipeline.train_batches("cifar10", per_process_batch_size=4, seed=1,
                                          start_step=start, data_dir=str(tmp_path))
    uninterrupted = take(batches(0), 11)
    resumed = take(batches(start_step), 11 - start_step)
  assert_batches_equal(resumed, uninterrupted[start_step:])


def test_imagenet_batches_and_resume(tmp_path):
  kwargs = {"data_dir": str(tmp_path), "image_size": 32}
  with tfds.testing.mock_data(num_examples=12):  # 3 steps an epoch
    info = input_pipeline.dataset_info("imagenet2012", **kwargs)
    assert (info.num_classes, info.image_shape) == (1000, (32, 32, 3))
    def batches(start):
      return input_pipeline.train_batches("imagenet2012", per_process_batch_size=4, seed=0,
                                          start_step=start, **kwargs)
    uninterrupted = take(batches(0), 5)
    resumed = take(batches(2), 3)
    evaluation = list(input_pipeline.eval_batches("imagenet2012", per_process_batch_size=5,
                                                  **kwargs))
  for batch in uninterrupted:
    check_batch(batch, 4, (32, 32, 3), 1000)
  assert_batches_equal(resumed, uninterrupted[2:])
  for batch in evaluation:
    check_batch(batch, 5, (32, 32, 3), 1000, masked=True)
  assert [batch["mask"].sum() for batch in evaluation] == [5, 5, 2]
