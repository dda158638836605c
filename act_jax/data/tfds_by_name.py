"""Any TFDS image classification dataset by its TFDS name (`dataset.name = "tfds"`,
`dataset.tfds_name`), held in memory like CIFAR.

A split is read once through the dataset's (image, label) supervised keys and cached as uint8
arrays with the number of classes beside the TFDS data (`catalog.tfds_by_name_cache_path`), so
later runs need no TensorFlow. Only datasets act-jax can train on as they are pass: one fixed
image size, 1 or 3 channels of uint8, integer class labels. Everything else, and every damaged
cache, fails in one line naming the config field to change. TF is reached only through
`tfds_pipeline`.
"""

import os
import zipfile
from typing import Any

import numpy as np

from act_jax.data import catalog, tfds_pipeline
from act_jax.errors import UserError

NAME_FIELD = "dataset.tfds_name"
CHANNELS = (1, 3)
CONVERT_HINT = "convert such data to an .npz of one image size: docs/own_data.md"


def checked_builder(tfds_name: str, data_dir: str | None, *, field: str = NAME_FIELD,
                    prepared: bool = True) -> tuple[Any, int]:
  """The builder of an image classification dataset and its number of classes, or a one-line
  error saying why act-jax cannot train on the dataset. Reads only the dataset's metadata, so
  `prepared=False` checks a dataset before it is downloaded."""
  tfds = tfds_pipeline.tfds_module()
  builder = (tfds_pipeline.prepared_builder(tfds_name, data_dir, field) if prepared
             else tfds_pipeline.tfds_builder(tfds_name, data_dir, field))

  def unusable(reason: str) -> catalog.DatasetDamagedError:
    return catalog.DatasetDamagedError(
        f"{field} = {tfds_name}: {reason}; act-jax trains on (image, label) datasets of one "
        f"image size ({CONVERT_HINT})")

  keys = builder.info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
    raise unusable(f"its supervised keys are {keys!r}, not an (image, label) pair")
  image, label = (builder.info.features[key] for key in keys)
  if not isinstance(image, tfds.features.Image):
    raise unusable(f"its input {keys[0]!r} is a {type(image).__name__}, not an Image")
  if None in image.shape or image.shape[-1] not in CHANNELS:
    raise unusable(f"its images have shape {list(image.shape)} (None: varies); allowed one "
                   "fixed [height, width, 1 or 3]")
  if np.dtype(image.np_dtype) != np.uint8:
    raise unusable(f"its images are {np.dtype(image.np_dtype)}; allowed uint8")
  if not isinstance(label, tfds.features.ClassLabel):
    raise unusable(f"its target {keys[1]!r} is a {type(label).__name__}, not a ClassLabel")
  return builder, int(label.num_classes)


def _checked_arrays(source: str, images: np.ndarray, labels: np.ndarray, num_classes: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, H, W, 1 or 3] and int32 labels in [0, num_classes), or a one-line
  `DatasetDamagedError` naming `source` (a cache file, or a split of a dataset)."""
  def bad(reason: str) -> catalog.DatasetDamagedError:
    return catalog.DatasetDamagedError(f"{source}: {reason}")
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in CHANNELS:
    raise bad(f"images {images.dtype}{list(images.shape)}, expected uint8 [n, height, width, "
              "1 or 3]")
  if not len(images):
    raise bad("no examples")
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
    raise bad(f"labels {labels.dtype}{list(labels.shape)} for {len(images)} images, expected "
              "integer class indices [n]")
  if num_classes < 2:
    raise bad(f"{num_classes} class(es): a classifier needs at least 2")
  if not 0 <= labels.min() <= labels.max() < num_classes:
    raise bad(f"labels in [{labels.min()}, {labels.max()}], outside [0, {num_classes}) (an "
              "unlabelled split?)")
  return images, labels.astype(np.int32)


def _read_cache(cache: str, refill: str) -> tuple[np.ndarray, np.ndarray, int]:
  def damaged(reason: str) -> catalog.DatasetDamagedError:
    return catalog.DatasetDamagedError(f"{cache} is damaged ({reason}): delete it; {refill}")
  try:
    with np.load(cache) as arrays:
      images, labels = arrays["image"], arrays["label"]
      num_classes = int(arrays["num_classes"])
  except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
    raise damaged(" ".join(f"{type(error).__name__}: {error}".split())[:160]) from None
  try:
    images, labels = _checked_arrays(cache, images, labels, num_classes)
  except catalog.DatasetDamagedError as error:
    raise damaged(str(error).removeprefix(f"{cache}: ")) from None
  return images, labels, num_classes


def split_arrays(tfds_name: str, split: str, data_dir: str | None, *, split_field: str
                 ) -> tuple[np.ndarray, np.ndarray, int]:
  """A whole split (TFDS split syntax: "test", "train[:90%]") as uint8 images [n, H, W, C],
  int32 labels and the number of classes; `split_field` is the config field that named the
  split, for the error when TFDS cannot read it."""
  cache = catalog.tfds_by_name_cache_path(data_dir, tfds_name, split)
  if os.path.exists(cache):
    return _read_cache(cache, f"the next run reads {tfds_name} {split} through TFDS again")
  builder, num_classes = checked_builder(tfds_name, data_dir)
  try:
    images, labels = tfds_pipeline.whole_split(builder, split, as_supervised=True)
  except (ValueError, KeyError) as error:  # an unknown split, a bad or empty slice
    known = ", ".join(builder.info.splits) or "none recorded"
    raise UserError(f"{split_field} = {split!r}: cannot read this split of {tfds_name} (its "
                    f"splits: {known}; slices such as 'train[:90%]' work): "
                    + " ".join(str(error).split())[:160]) from None
  images, labels = _checked_arrays(f"{split_field} = {split!r} of {tfds_name}",
                                   np.asarray(images), np.asarray(labels), num_classes)
  tfds_pipeline.write_cache(cache, image=images, label=labels, num_classes=np.int64(num_classes))
  return images, labels, num_classes


def prepare(tfds_name: str, data_dir: str | None) -> list[str]:
  """Downloads and prepares a dataset, checked before anything is downloaded, and caches its
  "train" and "test" splits; returns the splits it cached."""
  tfds = tfds_pipeline.tfds_module()
  builder, _ = checked_builder(tfds_name, data_dir, field="--dataset", prepared=False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  cached = [split for split in ("train", "test") if split in builder.info.splits]
  for split in cached:
    split_arrays(tfds_name, split, data_dir, split_field=f"dataset.tfds_{split}_split")
  return cached
