"""Input data: the in-memory datasets (order, resume, augmentation, evaluation batches), the
Fashion-MNIST reader, the validation hold-out, and CIFAR's array cache.

CIFAR cannot be downloaded here, so it runs on `tfds.testing.mock_data`; Fashion-MNIST runs on
tiny fake IDX files. ImageNet's tf.data path is tested in test_tfds_pipeline.py.
"""

import gzip
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from act_jax import parallel
from act_jax.data import catalog, datasets, fashion_mnist, in_memory, pipeline

from helpers import mock_prepared_tfds, write_fake_fashion_mnist

NUM_TRAIN, NUM_TEST, BATCH = 50, 20, 8


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory) -> ml_collections.ConfigDict:
  idx_dir = write_fake_fashion_mnist(tmp_path_factory.mktemp("idx"), NUM_TRAIN, NUM_TEST)
  return ml_collections.ConfigDict(dict(name="fashion_mnist", fashion_mnist_dir=idx_dir,
                                        data_dir=None, image_size=None, validation_examples=0))


@pytest.fixture(scope="module")
def stream(dataset_config) -> in_memory.InMemoryTrainData:
  return in_memory.InMemoryTrainData(datasets.in_memory_split(dataset_config, "train"),
                                     global_batch_size=BATCH, seed=3, mesh=parallel.make_mesh(),
                                     augment=False)


def pixels(image) -> bytes:
  """An example's identity: its pixels, which are distinct in random fake data."""
  return np.round(np.asarray(image, np.float32) * 255).astype(np.uint8).tobytes()


def test_fashion_mnist_reads_the_idx_files(dataset_config):
  info = datasets.dataset_info(dataset_config)
  assert info == catalog.DatasetInfo("fashion_mnist", 10, (28, 28, 1), NUM_TRAIN, NUM_TEST)
  split = datasets.in_memory_split(dataset_config, "test")
  images, labels = fashion_mnist.read_split(dataset_config.fashion_mnist_dir, "test")
  assert split.images.dtype == np.uint8 and split.images.shape == (NUM_TEST, 28, 28, 1)
  np.testing.assert_array_equal(split.images[..., 0], images)
  np.testing.assert_array_equal(split.labels, labels)


def test_idx_reader_rejects_wrong_magic_naming_the_file(tmp_path):
  path = str(tmp_path / "train-images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3))
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is damaged "
                     r"\(IDX magic number 2049, expected 2051\)"):
    fashion_mnist.read_idx(path, fashion_mnist.IMAGE_MAGIC)


def test_a_missing_fashion_mnist_names_the_path_and_the_install_command(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(fashion_mnist.DatasetMissingError,
                     match=f"not found in {missing} .*apt-get install dataset-fashion-mnist"):
    fashion_mnist.read_split(missing, "train")


def test_unknown_dataset_names_the_valid_ones(dataset_config):
  config = ml_collections.ConfigDict(dataset_config.to_dict())
  config.name = "mnist"
  with pytest.raises(ValueError, match="fashion_mnist, cifar10, cifar100, imagenet2012"):
    datasets.dataset_info(config)


def test_validation_holdout_is_the_end_of_the_training_split(dataset_config):
  config = ml_collections.ConfigDict(dataset_config.to_dict())
  config.validation_examples = 12
  train, validation = (datasets.in_memory_split(config, s) for s in ("train", "validation"))
  whole = datasets.in_memory_split(dataset_config, "train")
  assert (len(train), len(validation)) == (NUM_TRAIN - 12, 12)
  np.testing.assert_array_equal(np.concatenate([train.images, validation.images]), whole.images)
  assert datasets.dataset_info(config).num_train == NUM_TRAIN - 12


def test_train_batches_are_unit_range_images_and_labels(dataset_config, stream):
  assert stream.steps_per_epoch == NUM_TRAIN // BATCH
  batch = stream.batch(0)
  assert batch["image"].shape == (BATCH, 28, 28, 1) and batch["image"].dtype == jnp.float32
  assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
  assert batch["label"].shape == (BATCH,) and batch["label"].dtype == jnp.int32
  labels = datasets.in_memory_split(dataset_config, "train").labels
  np.testing.assert_array_equal(np.asarray(batch["label"]), labels[stream.indices(0)])


def test_an_epoch_sees_every_example_at_most_once_and_epochs_reshuffle(stream):
  epoch = [stream.indices(step) for step in range(stream.steps_per_epoch)]
  seen = np.concatenate(epoch)
  assert len(seen) == len(set(seen.tolist())) == stream.steps_per_epoch * BATCH
  next_epoch = np.concatenate([stream.indices(step + stream.steps_per_epoch)
                               for step in range(stream.steps_per_epoch)])
  assert not np.array_equal(seen, next_epoch)


def test_batches_are_a_pure_function_of_seed_and_step(dataset_config, stream):
  """What resuming relies on: a new stream at step k yields what the first one yields there."""
  split = datasets.in_memory_split(dataset_config, "train")
  resumed = in_memory.InMemoryTrainData(split, global_batch_size=BATCH, seed=3,
                                        mesh=parallel.make_mesh(), augment=False)
  for step in (13, 2, 7):  # out of order, across epochs
    np.testing.assert_array_equal(resumed.batch(step)["image"], stream.batch(step)["image"])
  other_seed = in_memory.InMemoryTrainData(split, global_batch_size=BATCH, seed=4,
                                           mesh=parallel.make_mesh(), augment=False)
  assert not np.array_equal(other_seed.indices(0), stream.indices(0))


def test_cifar_augmentation_is_a_reflect_padded_crop_and_flip():
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.PRNGKey(1), 16)
  augmented = np.asarray(jax.jit(jax.vmap(in_memory.cifar_augment))(images, keys))
  padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
  crops = set()
  for index, image in enumerate(augmented):
    matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)
               if np.array_equal(image, (lambda crop: crop[:, ::-1] if flip else crop)(
                   padded[index, top:top + 8, left:left + 8]))]
    assert matches, f"image {index} is not a flipped or unflipped crop of the padded image"
    crops.add(matches[0])
  assert len(crops) > 4  # each image draws its own crop and flip


@pytest.mark.parametrize("num_examples", [None, 9, 15])
def test_processes_evaluate_every_example_exactly_once(dataset_config, num_examples):
  split = datasets.in_memory_split(dataset_config, "test")
  indices = None if num_examples is None else np.arange(num_examples)
  runs = [list(in_memory.eval_batches(split, per_process_batch_size=4, indices=indices,
                                      process_index=index, process_count=2)) for index in (0, 1)]
  whole = list(in_memory.eval_batches(split, per_process_batch_size=8, indices=indices))
  assert len(runs[0]) == len(runs[1]) == len(whole)  # no process waits for another
  for first, second, joined in zip(*runs, whole, strict=True):  # the same global batches
    for key in joined:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), joined[key])
  real = [(int(i), pixels(image)) for batch in whole
          for i, image, m in zip(batch["index"], batch["image"], batch["mask"], strict=True)
          if m > 0]
  count = num_examples or NUM_TEST
  assert [i for i, _ in real] == list(range(count))
  assert [p for _, p in real] == [pixels(image / 255.0) for image in split.images[:count]]
  padding = [b["image"][b["mask"] == 0] for b in whole]
  assert all(float(np.abs(p).max(initial=0.0)) == 0.0 for p in padding)


def test_eval_data_serves_any_subset_of_its_examples(dataset_config):
  config = ml_collections.ConfigDict({"dataset": dataset_config.to_dict(),
                                      "eval": {"batch_size": 8}})
  data = pipeline.eval_data(config, num_examples=15)
  assert data.num_examples == 15 and data.supports_subsets
  subset = [int(i) for b in data.batches([3, 11, 14]) for i, m in zip(b["index"], b["mask"],
                                                                       strict=True) if m > 0]
  assert subset == [3, 11, 14]


def test_cifar_is_read_once_then_served_from_its_array_cache(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  config = ml_collections.ConfigDict(dict(name="cifar10", fashion_mnist_dir="", data_dir=str(
      tmp_path), image_size=None, validation_examples=0))
  with mock_prepared_tfds(num_examples=20):
    info = datasets.dataset_info(config)  # reads both splits through TFDS
    first = datasets.in_memory_split(config, "train")
  assert (info.num_train, info.num_test, info.image_shape) == (20, 20, (32, 32, 3))
  for split in ("train", "test"):
    assert os.path.exists(catalog.npz_cache_path(str(tmp_path), "cifar10", split))
  datasets._stored_split.cache_clear()
  # No mock now: the dataset is not prepared in tmp_path; the cache serves both splits.
  assert datasets.dataset_info(config) == info
  again = datasets.in_memory_split(config, "train")
  np.testing.assert_array_equal(again.images, first.images)
  assert first.images.shape == (20, 32, 32, 3) and first.images.dtype == np.uint8


def test_a_train_step_with_its_data_sees_the_batch_of_its_step(stream):
  """The batch is gathered inside the compiled step: the step sees `batch(step)`."""

  def step_fn(state, batch, rng):
    del rng
    total = jax.lax.psum(batch["image"].sum() + batch["label"].sum(), parallel.DATA_AXIS)
    return state + 1, {"total": total}

  compiled = parallel.distribute_train_step_with_data(step_fn, stream.device_batch,
                                                      parallel.make_mesh())
  state = parallel.replicate(jnp.zeros((), jnp.int32), parallel.make_mesh())
  for step in (0, 9):
    state, metrics = compiled(state, *stream.step_inputs(step), jax.random.PRNGKey(0))
    batch = stream.batch(step)
    expected = float(np.sum(batch["image"]) + np.sum(batch["label"]))
    np.testing.assert_allclose(float(metrics["total"]), expected, rtol=1e-6)
  assert int(state) == 2
