"""Fashion-MNIST from its IDX files (Debian's `dataset-fashion-mnist`), with NumPy alone.

The embedded default dataset must work with no network and without TensorFlow: the four IDX
.gz files (60,000 training and 10,000 test images of 28x28) are read straight into memory.
"""

import gzip
import os
import zlib

import numpy as np

from act_jax.data.catalog import DatasetDamagedError, DatasetMissingError

IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # unsigned bytes (0x08) in 3 and 1 dimensions
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def _damaged(path: str, reason: str) -> DatasetDamagedError:
  return DatasetDamagedError(
      f"{path} is damaged ({reason}): reinstall it with `apt-get install --reinstall "
      "dataset-fashion-mnist`, or point --config.dataset.fashion_mnist_dir at intact IDX files")


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes: big-endian magic and dimensions, then data.

  A truncated or corrupt file (a cut gzip stream, a wrong magic number, fewer bytes than its
  dimensions say) raises `DatasetDamagedError` here, naming the file, rather than a reshape
  error or silently wrong labels later.
  """
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
    raise _damaged(path, f"{type(error).__name__}: {error}") from None
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise _damaged(path, f"IDX magic number {found}, expected {magic}")
  num_dims = magic & 0xFF
  header_size = 4 + 4 * num_dims
  if len(data) < header_size:
    raise _damaged(path, f"{len(data)} bytes, shorter than its header")
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(num_dims)]
  array = np.frombuffer(data, np.uint8, offset=header_size)
  if array.size != np.prod(dims):
    raise _damaged(path, f"{array.size} bytes of data for dimensions {dims}")
  return array.reshape(dims)


def missing_files(directory: str) -> list[str]:
  return [name for names in IDX_FILES.values() for name in names
          if not os.path.exists(os.path.join(directory, name))]


def check_files(directory: str) -> None:
  """Raises `DatasetMissingError` at once, naming the directory and the install command, when
  the files are not there: reading local files needs no retries."""
  missing = missing_files(directory)
  if missing:
    raise DatasetMissingError(
        f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}): run "
        f"`{INSTALL_HINT}`, or point --config.dataset.fashion_mnist_dir at the IDX files")


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, 28, 28] and labels [n] of one split, checked for consistency.

  Raises `DatasetMissingError` when the files are missing (`check_files`).
  """
  check_files(directory)
  images_name, labels_name = IDX_FILES[split]
  images = read_idx(os.path.join(directory, images_name), IMAGE_MAGIC)
  labels = read_idx(os.path.join(directory, labels_name), LABEL_MAGIC)
  images_path, labels_path = (os.path.join(directory, name) for name in (images_name, labels_name))
  if images.shape[1:] != IMAGE_SHAPE:
    raise _damaged(images_path, f"images of shape {images.shape[1:]}, expected {IMAGE_SHAPE}")
  if len(images) != len(labels):
    raise _damaged(labels_path, f"{len(labels)} labels for the {len(images)} images of "
                   f"{images_name}")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise _damaged(labels_path, f"label {labels.max()} outside [0, {NUM_CLASSES})")
  return images, labels
