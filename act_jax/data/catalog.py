"""What the data layer knows without reading anything: the datasets, their shapes and where
their files go. Every other data module builds on this one; it imports none of them.
"""

import dataclasses
import hashlib
import os
import re

import numpy as np

from act_jax.errors import UserError


class DatasetDamagedError(UserError, ValueError):
  """A dataset file is truncated, malformed or stale; the message names the file and the fix."""


class DatasetMissingError(UserError, FileNotFoundError):
  """A dataset's files are not where the config says; the message names the path and the fix."""


# The user's own data (`dataset.path`): arrays in an .npz, or images in class folders.
OWN_DATASETS = ("npz", "image_folder")
# Any TFDS image classification dataset by its TFDS name (`dataset.tfds_name`), held in memory.
TFDS_BY_NAME = "tfds"
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012", *OWN_DATASETS,
                 TFDS_BY_NAME)
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")  # prepared once by act_jax.prepare_data
IN_MEMORY_DATASETS = ("fashion_mnist", "cifar10", "cifar100", *OWN_DATASETS, TFDS_BY_NAME)
CROP_FLIP_DATASETS = ("cifar10", "cifar100")  # trained with the release's CIFAR augmentation
EVAL_SPLITS = ("test", "validation")
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}

# One process's rows of a batch on the host: "image", "label" and, for evaluation, "mask" and
# "index" (NumPy arrays).
HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the schedule need to know about a dataset.

  `image_shape` is the shape of the images the pipeline yields (after any crop); `num_train`
  counts the examples training draws from (the validation hold-out excluded) and `num_test`
  the split that evaluation reads by default (ImageNet's labelled "validation").
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


@dataclasses.dataclass(frozen=True)
class Split:
  """A whole split in memory: images [n, H, W, C] (uint8, as datasets store them, or float in
  [0, 1]) and int32 labels [n]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, rows: slice) -> "Split":
    return Split(self.images[rows], self.labels[rows])


def data_dir_root(data_dir: str | None) -> str:
  """The TFDS data directory that `data_dir` (None: TFDS's default) stands for."""
  return data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def npz_cache_path(data_dir: str | None, name: str, split: str) -> str:
  """Where a TFDS-read small split is cached as uint8 arrays, beside the TFDS data."""
  return os.path.join(data_dir_root(data_dir), "act_jax_arrays", f"{name}_{split}.npz")


def tfds_by_name_cache_path(data_dir: str | None, tfds_name: str, split: str) -> str:
  """Where a split of a TFDS dataset named by `dataset.tfds_name` is cached (with its number of
  classes). TFDS names and splits may hold "/", ":", "[" and "%" ("cifar10_corrupted/fog_5",
  "train[:90%]"): each run of other characters becomes one "_", and a short hash of the
  original keeps two spellings that map alike apart."""
  key = f"{tfds_name}|{split}"
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{tfds_name}_{split}").strip("_")
  digest = hashlib.sha256(key.encode()).hexdigest()[:8]
  return os.path.join(data_dir_root(data_dir), "act_jax_arrays", f"tfds_{readable}_{digest}.npz")
