"""A TFDS builder for Fashion-MNIST from local IDX files (Debian's `dataset-fashion-mnist`).

The embedded default dataset must work with no network: this builder reads the four IDX .gz
files from the manual directory and prepares an ordinary TFDS dataset, so the rest of the
pipeline treats it like any other TFDS dataset.
Usage: `FashionMnistIdx(data_dir=...).download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=idx_dir))`.
Imported only by `input_pipeline`, lazily (this module imports TFDS).
"""

import gzip
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # unsigned bytes (0x08) in 3 and 1 dimensions
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


def has_idx_files(directory: str) -> bool:
  """Whether all four IDX files are there, i.e. whether the dataset can be built offline."""
  return all(os.path.exists(os.path.join(directory, name))
             for names in IDX_FILES.values() for name in names)


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes: big-endian magic and dimensions, then data.

  The magic number is checked so that swapped or corrupt files fail here, naming the file,
  rather than as a reshape error (or silently wrong labels) later.
  """
  with gzip.open(path, "rb") as f:
    data = f.read()
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
  num_dims = magic & 0xFF
  header_size = 4 + 4 * num_dims
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(num_dims)]
  array = np.frombuffer(data, np.uint8, offset=header_size)
  if array.size != np.prod(dims):
    raise ValueError(f"{path}: {array.size} bytes of data for dimensions {dims}")
  return array.reshape(dims)


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, 28, 28] and labels [n] of one split, checked for consistency."""
  images_name, labels_name = IDX_FILES[split]
  images = read_idx(os.path.join(directory, images_name), IMAGE_MAGIC)
  labels = read_idx(os.path.join(directory, labels_name), LABEL_MAGIC)
  if images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"{images_name}: images of shape {images.shape[1:]}, expected {IMAGE_SHAPE}")
  if len(images) != len(labels):
    raise ValueError(f"{directory}: {len(images)} images in {images_name} but {len(labels)} "
                     f"labels in {labels_name}")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f"{labels_name}: label {labels.max()} outside [0, {NUM_CLASSES})")
  return images, labels


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Xiao et al. 2017): 60k train / 10k test 28x28 grey images, 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "Built from the IDX files of the Fashion-MNIST release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("`apt-get install dataset-fashion-mnist`, or place the four "
                                  "*-ubyte.gz IDX files of Fashion-MNIST in the manual dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(*IMAGE_SHAPE, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    return {split: self._generate_examples(dl_manager.manual_dir, split) for split in IDX_FILES}

  def _generate_examples(self, directory: os.PathLike, split: str) -> Iterator[tuple[int, dict]]:
    """Keyed by position, so TFDS's shuffling at preparation time is reproducible."""
    images, labels = read_split(os.fspath(directory), split)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield index, {"image": image[..., None], "label": int(label)}
