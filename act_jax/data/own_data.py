"""The user's own data: arrays from an `.npz`, or images in class folders, checked and held in
memory like Fashion-MNIST (NumPy and Pillow only, no TensorFlow).

`dataset.name = "npz"`: `dataset.path` is an .npz with `x_train`, `y_train`, `x_test`,
`y_test`. `dataset.name = "image_folder"`: `dataset.path` holds `train/<class>/*.png` and
`test/<class>/*.png`, each class a folder, its index its place in the sorted folder names.

The number of classes and the image shape come from the data, so nothing about it is written
in a config. Every check happens when the data is read, before anything compiles, and fails
in one line naming the file, the array (or image) and what is allowed: a wrong layout (NCHW,
one-hot labels) or range (float pixels in [0, 255]) would otherwise train without an error on
inputs the models and attacks do not expect (images in [0, 1], eps in those units).
"""

import dataclasses
import functools
import os
import zipfile

import numpy as np

from act_jax.data.catalog import DatasetDamagedError, DatasetMissingError, Split

NPZ_ARRAYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
CHANNELS = (1, 3)
IMAGE_SUFFIX = ".png"
GRAYSCALE_MODES = ("1", "L", "LA")  # Pillow modes read as one channel; any other as RGB
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class OwnData:
  """Both splits, checked: one image shape, labels in [0, num_classes)."""
  splits: dict[str, Split]
  num_classes: int


def check_available(kind: str, path: str | None) -> None:
  """Raises `DatasetMissingError` naming `dataset.path` and the layout it must have."""
  if kind == "npz":
    if not (path and os.path.isfile(path)):
      raise DatasetMissingError(
          f"dataset.path = {path!r}: no such file; dataset.name = npz reads an .npz with "
          f"x_train, y_train, x_test, y_test (a relative path is read from the working "
          f"directory)")
    return
  folders = [os.path.join(path or "", split) for split in SPLITS]
  missing = [folder for folder in folders if not os.path.isdir(folder)]
  if missing:
    raise DatasetMissingError(
        f"dataset.path = {path!r}: no folder {', '.join(missing)}; dataset.name = image_folder "
        f"reads PATH/train/<class>/*{IMAGE_SUFFIX} and PATH/test/<class>/*{IMAGE_SUFFIX}")


@functools.lru_cache(maxsize=2)
def read(kind: str, path: str) -> OwnData:
  """Both splits of `path`, read and checked once per process (evaluations reuse them)."""
  check_available(kind, path)
  return _read_npz(path) if kind == "npz" else _read_image_folder(path)


def _images(path: str, name: str, images: np.ndarray) -> np.ndarray:
  """NHWC images, uint8 in [0, 255] or float32 in [0, 1], from an array `name` of `path`."""
  def bad(reason: str) -> DatasetDamagedError:
    return DatasetDamagedError(f"{path}: {name} {reason}")
  shape = list(images.shape)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in CHANNELS:
    hint = ("; channels first? store np.transpose(x, (0, 2, 3, 1))"
            if images.ndim == 4 and images.shape[1] in CHANNELS else "")
    raise bad(f"has shape {shape}: allowed NHWC [n, height, width, 1 or 3] or NHW "
              f"[n, height, width]{hint}")
  if not len(images):
    raise bad("has no images")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise bad(f"is {images.dtype}: allowed uint8 in [0, 255] or float in [0, 1]")
  low, high = float(np.min(images)), float(np.max(images))
  if not 0.0 <= low <= high <= 1.0:  # NaN fails every comparison
    hint = "; divide by 255, or store uint8" if 1.0 < high < np.inf else ""
    raise bad(f"is {images.dtype} with values in [{low:g}, {high:g}]: float images must be in "
              f"[0, 1]{hint}")
  return images.astype(np.float32)


def _labels(path: str, name: str, labels: np.ndarray, num_images: int) -> np.ndarray:
  """int32 class indices [n], one per image, none negative."""
  def bad(reason: str) -> DatasetDamagedError:
    return DatasetDamagedError(f"{path}: {name} {reason}")
  if labels.ndim != 1:
    hint = "; one-hot? store y.argmax(1)" if labels.ndim == 2 else ""
    raise bad(f"has shape {list(labels.shape)}: allowed integer class indices [n]{hint}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise bad(f"is {labels.dtype}: allowed integer class indices in [0, num_classes)")
  if len(labels) != num_images:
    raise bad(f"has {len(labels)} labels for {num_images} images")
  if labels.min() < 0:
    raise bad(f"has label {labels.min()}: allowed integer class indices in [0, num_classes)")
  return labels.astype(np.int32)


def _checked(path: str, splits: dict[str, Split], names: dict[str, tuple[str, str]]) -> OwnData:
  """Both splits with one image shape; the classes are those of the training labels."""
  (train_images, train_labels), (test_images, test_labels) = (names[s] for s in SPLITS)
  train, test = splits["train"], splits["test"]
  if train.images.shape[1:] != test.images.shape[1:]:
    raise DatasetDamagedError(
        f"{path}: {test_images} has images of shape {list(test.images.shape[1:])}, "
        f"{train_images} of {list(train.images.shape[1:])}: both splits need one image shape")
  num_classes = int(train.labels.max()) + 1
  if num_classes < 2:
    raise DatasetDamagedError(f"{path}: {train_labels} has one class: a classifier needs "
                              "labels of at least 2 classes")
  if test.labels.max() >= num_classes:
    raise DatasetDamagedError(
        f"{path}: {test_labels} has label {test.labels.max()}, a class that {train_labels} "
        f"lacks (its labels are in [0, {num_classes}), which sets the number of classes)")
  return OwnData(splits, num_classes)


def _read_npz(path: str) -> OwnData:
  wanted = [name for names in NPZ_ARRAYS.values() for name in names]
  if not zipfile.is_zipfile(path):  # np.load would try it as a pickle, and blame pickling
    raise DatasetDamagedError(f"{path}: not an .npz (the zip of .npy arrays that np.savez "
                              "writes)")
  try:
    with np.load(path, allow_pickle=False) as arrays:
      stored = list(arrays.files)
      loaded = {name: arrays[name] for name in wanted if name in stored}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:160]
    raise DatasetDamagedError(f"{path}: cannot be read as an .npz ({reason})") from None
  missing = [name for name in wanted if name not in loaded]
  if missing:
    raise DatasetDamagedError(
        f"{path}: no array {', '.join(missing)} (it has {', '.join(stored) or 'none'}); "
        f"dataset.name = npz reads {', '.join(wanted)}")
  splits = {}
  for split, (images_name, labels_name) in NPZ_ARRAYS.items():
    images = _images(path, images_name, loaded[images_name])
    splits[split] = Split(images, _labels(path, labels_name, loaded[labels_name], len(images)))
  return _checked(path, splits, NPZ_ARRAYS)


def _read_image(file: str, mode: str | None) -> np.ndarray:
  """An image as uint8 [H, W, C], converted to `mode` (None: the image's own, gray or RGB)."""
  from PIL import Image
  try:
    with Image.open(file) as image:
      mode = mode or ("L" if image.mode in GRAYSCALE_MODES else "RGB")
      pixels = np.asarray(image.convert(mode), np.uint8)
  except (OSError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:160]
    raise DatasetDamagedError(f"{file}: cannot be read as an image ({reason})") from None
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _read_folder_split(path: str, split: str, classes: list[str], mode: str | None) -> Split:
  """One split's images, class by class, in sorted file order; all of one size."""
  images, labels, shape = [], [], None
  for label, name in enumerate(classes):
    folder = os.path.join(path, split, name)
    if not os.path.isdir(folder):
      continue  # a class may be absent from the test split
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIX))
    if not files and split == "train":
      raise DatasetDamagedError(f"{folder}: no *{IMAGE_SUFFIX} images; each class folder of "
                                "train/ needs at least one")
    for file in files:
      pixels = _read_image(os.path.join(folder, file), mode)
      mode = mode or ("L" if pixels.shape[-1] == 1 else "RGB")
      shape = shape or pixels.shape
      if pixels.shape != shape:
        raise DatasetDamagedError(
            f"{os.path.join(folder, file)}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the "
            f"images before it {shape[1]}x{shape[0]}: all images need one size (resize them)")
      images.append(pixels)
      labels.append(label)
  if not images:
    raise DatasetDamagedError(f"{os.path.join(path, split)}: no *{IMAGE_SUFFIX} images in its "
                              "class folders")
  return Split(np.stack(images), np.asarray(labels, np.int32))


def _read_image_folder(path: str) -> OwnData:
  """The classes are train/'s folders; the first training image decides gray or RGB."""
  def folders(split: str) -> list[str]:
    root = os.path.join(path, split)
    return sorted(n for n in os.listdir(root)
                  if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
  classes = folders("train")
  unknown = sorted(set(folders("test")) - set(classes))
  if unknown:
    raise DatasetDamagedError(f"{os.path.join(path, 'test')}: class folder(s) "
                              f"{', '.join(unknown)} not in train/ ({', '.join(classes)})")
  train = _read_folder_split(path, "train", classes, None)
  test = _read_folder_split(path, "test", classes, "L" if train.images.shape[-1] == 1 else "RGB")
  names = {split: (f"{split}/ images", f"{split}/ class folders") for split in SPLITS}
  return _checked(path, {"train": train, "test": test}, names)
