"""Which datasets there are, what a run needs to know about them, and their in-memory splits.

Fashion-MNIST, CIFAR-10 and CIFAR-100 are small (at most ~150 MB of uint8 pixels): they are
read once into memory and served from there (`in_memory`). Fashion-MNIST is read from its IDX
files with NumPy alone. CIFAR, and any TFDS image classification dataset named by
`dataset.tfds_name` (`dataset.name = "tfds"`), are read through TFDS once and cached as a `.npz`
next to the TFDS data, so later runs need no TensorFlow. The user's own data (`npz`,
`image_folder`) is read by `own_data` into memory too. Own data and TFDS datasets by name say
themselves how many classes and what image shape they have.
ImageNet streams through tf.data (`tfds_pipeline`).

A run may hold out the last `dataset.validation_examples` training examples as a validation
split (`eval.split = "validation"`): recipes are tuned on it, never on the test split.
"""

import functools
import os

import ml_collections
import numpy as np

from act_jax.data import fashion_mnist, own_data
from act_jax.data.catalog import (
  DATASET_NAMES,
  IMAGE_SHAPES,
  IN_MEMORY_DATASETS,
  NUM_CLASSES,
  OWN_DATASETS,
  TFDS_BY_NAME,
  DatasetDamagedError,
  DatasetInfo,
  Split,
  npz_cache_path,
  tfds_by_name_cache_path,
)


@functools.lru_cache(maxsize=8)
def _stored_split(name: str, split: str, fashion_mnist_dir: str, data_dir: str | None) -> Split:
  """A split as stored, decoded once per process (cached: evaluations reuse it)."""
  if name == "fashion_mnist":
    images, labels = fashion_mnist.read_split(fashion_mnist_dir, split)
    return Split(images[..., None], labels.astype(np.int32))
  from act_jax.data import tfds_pipeline  # TensorFlow, only if the .npz cache is missing
  images, labels = tfds_pipeline.cifar_arrays(name, split, data_dir)
  return Split(images, labels)


@functools.lru_cache(maxsize=4)
def _tfds_split(tfds_name: str, split: str, data_dir: str | None, split_field: str
                ) -> tuple[Split, int]:
  """A split of a TFDS dataset named by `dataset.tfds_name`, and its number of classes."""
  from act_jax.data import tfds_by_name  # TensorFlow, only if the .npz cache is missing
  images, labels, num_classes = tfds_by_name.split_arrays(tfds_name, split, data_dir,
                                                          split_field=split_field)
  return Split(images, labels), num_classes


def _tfds_stored(dataset_config: ml_collections.ConfigDict, split: str) -> tuple[Split, int]:
  """"train" or "test" of a `tfds` dataset: the TFDS split that `dataset.tfds_train_split` or
  `dataset.tfds_test_split` names (unset: "train", "test"), and the number of classes."""
  field = f"tfds_{split}_split"
  return _tfds_split(dataset_config.tfds_name, _tfds_split_name(dataset_config, split),
                     dataset_config.data_dir, f"dataset.{field}")


def _tfds_split_name(dataset_config: ml_collections.ConfigDict, split: str) -> str:
  return dataset_config.get(f"tfds_{split}_split") or split


def _stored(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """"train" or "test" of an in-memory dataset, whole."""
  if dataset_config.name in OWN_DATASETS:
    return own_data.read(dataset_config.name, dataset_config.path).splits[split]
  if dataset_config.name == TFDS_BY_NAME:
    return _tfds_stored(dataset_config, split)[0]
  return _stored_split(dataset_config.name, split, dataset_config.fashion_mnist_dir,
                       dataset_config.data_dir)


def in_memory_split(dataset_config: ml_collections.ConfigDict, split: str) -> Split:
  """"train" (without the validation hold-out), "validation" (the hold-out) or "test"."""
  name = dataset_config.name
  if name not in IN_MEMORY_DATASETS:
    raise ValueError(f"{name} is not held in memory; in-memory datasets: "
                     f"{', '.join(IN_MEMORY_DATASETS)}")
  holdout = dataset_config.validation_examples
  if split == "test":
    return _stored(dataset_config, "test")
  train = _stored(dataset_config, "train")
  if holdout >= len(train):
    raise ValueError(f"dataset.validation_examples = {holdout} leaves no training examples "
                     f"(the training split has {len(train)})")
  return train.take(slice(len(train) - holdout, None) if split == "validation"
                    else slice(0, len(train) - holdout))


def dataset_info(dataset_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Classes, image shape and split sizes; reads (or for TFDS, prepares) the dataset."""
  name = dataset_config.name
  if name not in DATASET_NAMES:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
  if name not in IN_MEMORY_DATASETS:
    from act_jax.data import tfds_pipeline
    return tfds_pipeline.imagenet_info(dataset_config.data_dir, dataset_config.image_size)
  train, test = (in_memory_split(dataset_config, split) for split in ("train", "test"))
  if name in OWN_DATASETS:
    num_classes = own_data.read(name, dataset_config.path).num_classes
    image_shape = tuple(train.images.shape[1:])
  elif name == TFDS_BY_NAME:
    num_classes, test_classes = (_tfds_stored(dataset_config, s)[1] for s in ("train", "test"))
    image_shape = tuple(train.images.shape[1:])
    if (test_classes, test.images.shape[1:]) != (num_classes, image_shape):
      raise DatasetDamagedError(
          f"dataset.tfds_name = {dataset_config.tfds_name}: its test split has {test_classes} "
          f"classes and images {list(test.images.shape[1:])}, its training split {num_classes} "
          f"and {list(image_shape)}")
  else:
    num_classes, image_shape = NUM_CLASSES[name], IMAGE_SHAPES[name]
  return DatasetInfo(name=name, num_classes=num_classes, image_shape=image_shape,
                     num_train=len(train), num_test=len(test))


def check_available(dataset_config: ml_collections.ConfigDict) -> None:
  """Raises a one-line error if the dataset is not where the config says; reads no data.

  Every process of a run calls this before the first one writes anything, so that a missing
  dataset stops all of them at once, naming the directory and how to prepare it.
  """
  name = dataset_config.name
  if name == "fashion_mnist":
    fashion_mnist.check_files(dataset_config.fashion_mnist_dir)
    return
  if name in OWN_DATASETS:
    own_data.check_available(name, dataset_config.path)
    return
  field = "dataset.name"
  if name == TFDS_BY_NAME:
    tfds_name, field = dataset_config.tfds_name, "dataset.tfds_name"
    caches = [tfds_by_name_cache_path(dataset_config.data_dir, tfds_name,
                                      _tfds_split_name(dataset_config, split))
              for split in ("train", "test")]
  elif name in IN_MEMORY_DATASETS:  # CIFAR
    tfds_name = name
    caches = [npz_cache_path(dataset_config.data_dir, name, split) for split in ("train", "test")]
  else:  # ImageNet streams from the TFDS files themselves
    tfds_name, caches = name, []
  if caches and all(os.path.exists(cache) for cache in caches):
    return
  from act_jax.data import tfds_pipeline
  tfds_pipeline.prepared_builder(tfds_name, dataset_config.data_dir, field)
